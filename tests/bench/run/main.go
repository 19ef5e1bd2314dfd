// The bench's driver: starts the app, Redis and one peer at a time (direct, HAProxy, nginx, the
// sidecar with the memory store and with Redis), runs the load generator against it, and writes
// results.json and results.md (the table also goes to stdout). Meant to run inside a network
// namespace of its own (tests/bench/bench.sh makes it), so every port here is fixed and loopback.
//
// Each figure is measured for every peer back to back, the order rotated per repetition; the
// table shows medians. Nothing here judges speed: it fails only when a peer cannot run at all.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ssekeeper.dev/bench/internal/proc"
)

const (
	appAddr   = "127.0.0.1:18080"
	redisPort = 16379
)

// Each measurement's peer listens on ports of its own, so no socket of the previous one
// (TIME_WAIT, a worker still exiting) is in the way; they stay below the ephemeral range
// (30000-65000, bench.sh sets it in the namespace).
var (
	peerAddr  string
	adminAddr string
	portSeq   = 20000
)

func nextPorts() {
	portSeq += 2
	peerAddr = fmt.Sprintf("127.0.0.1:%d", portSeq)
	adminAddr = fmt.Sprintf("127.0.0.1:%d", portSeq+1)
}

var (
	mode     = flag.String("mode", "short", "short | full")
	out      = flag.String("out", "target/bench", "directory for results.json, results.md, logs")
	binDir   = flag.String("bin", "target/bench", "directory with the app and load binaries")
	sidecar  = flag.String("sidecar", "target/release/ssekeeper-sidecar", "the sidecar binary")
	command  = flag.String("command", "make bench", "the command shown in the results")
	repsFlag = flag.Int("reps", 0, "repetitions (default: 2 in full mode, 1 in short)")
	only     = flag.String("figures", "", "comma-separated figure ids to run (default: all)")
	onlyPeer = flag.String("peers", "", "comma-separated peers to run (default: all)")
)

var peers = []string{"direct", "haproxy", "nginx", "sidecar-memory", "sidecar-redis"}

var peerLabel = map[string]string{
	"direct":         "direct",
	"haproxy":        "HAProxy",
	"nginx":          "nginx",
	"sidecar-memory": "sidecar memory store",
	"sidecar-redis":  "sidecar Redis",
}

// A figure is one load-generator run per peer.
type figure struct {
	ID         string
	Args       []string
	Timeout    float64 // seconds, the load generator's hard limit
	SkipDirect bool    // nothing to measure without a proxy (its RSS)
	// Bcast makes it the broadcast figure: its own peers (bcastPeers), see broadcast.go.
	Bcast *bcastSpec
}

func figures(full bool) []figure {
	tp := func(id string, streams, size int, dur float64) figure {
		return figure{ID: id, Timeout: dur + 30, Args: []string{"-mode", "throughput",
			"-streams", strconv.Itoa(streams), "-size", strconv.Itoa(size), "-dur", fmt.Sprint(dur)}}
	}
	fan := func(streams int, rate float64, secs float64) figure {
		count := int(rate * secs)
		return figure{ID: fmt.Sprintf("fan/%g", rate), Timeout: secs + 20, Args: []string{"-mode", "fanout",
			"-streams", strconv.Itoa(streams), "-rate", fmt.Sprint(rate), "-count", strconv.Itoa(count), "-size", "100"}}
	}
	idle := func(steps string, settle float64) figure {
		return figure{ID: "idle", Timeout: 90, SkipDirect: true, Args: []string{"-mode", "idle",
			"-steps", steps, "-settle", fmt.Sprint(settle)}}
	}
	conn := func(dur float64) figure {
		return figure{ID: "connrate", Timeout: dur + 15, Args: []string{"-mode", "connrate",
			"-workers", "16", "-dur", fmt.Sprint(dur), "-max", "60000"}}
	}
	bcast := func(subs int, rate, window float64) figure {
		return figure{ID: "bcast", Timeout: window + 60, Bcast: &bcastSpec{Subs: subs, Rate: rate, Window: window}}
	}
	if !full {
		return []figure{tp("tp/1x100B", 1, 100, 1), fan(200, 10, 1), idle("0,100", 0.5), conn(0.5), bcast(300, 5, 2)}
	}
	return []figure{
		tp("tp/1x100B", 1, 100, 1.5), tp("tp/8x100B", 8, 100, 1.5),
		tp("tp/1x1KiB", 1, 1024, 1.5), tp("tp/8x1KiB", 8, 1024, 1.5),
		fan(5000, 1, 4), fan(5000, 3, 4), fan(5000, 10, 4),
		idle("0,5000,9900", 1), conn(2), bcast(10000, 5, 8),
	}
}

// Measurement is one figure for one peer in one repetition.
type Measurement struct {
	Figure   string             `json:"figure"`
	Peer     string             `json:"peer"`
	Rep      int                `json:"rep"`
	Position int                `json:"position"`
	Started  time.Time          `json:"started"`
	Load1    float64            `json:"load1"`
	Values   map[string]float64 `json:"values"`
	Raw      json.RawMessage    `json:"raw,omitempty"`
	Sidecar  map[string]float64 `json:"sidecar_metrics,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// Results is results.json.
type Results struct {
	Meta         map[string]any                           `json:"meta"`
	Measurements []Measurement                            `json:"measurements"`
	Summary      map[string]map[string]map[string]float64 `json:"summary"` // figure -> peer -> value -> median
	Failures     []string                                 `json:"failures,omitempty"`
}

// ---- processes ----

type running struct {
	name  string
	cmd   *exec.Cmd
	addr  string
	admin string // sidecar only
}

var live = map[*exec.Cmd]bool{}

func spawn(name string, logPath string, bin string, args ...string) (*exec.Cmd, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "\n==== %s %s %v\n", time.Now().Format(time.RFC3339), bin, args)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	live[cmd] = true
	go func() { cmd.Wait(); f.Close() }()
	return cmd, nil
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func stop(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	pid := cmd.Process.Pid
	if grace > 0 {
		syscall.Kill(-pid, syscall.SIGTERM)
		for end := time.Now().Add(grace); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if syscall.Kill(pid, 0) != nil || cmd.ProcessState != nil {
				break
			}
		}
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(-pid, 0) != nil { // the whole group is gone (nginx's workers too)
			break
		}
	}
	delete(live, cmd)
}

func stopAll() {
	for cmd := range live {
		stop(cmd, 0)
	}
}

func httpGet(addr, path string, timeout time.Duration) (int, string, error) {
	c := http.Client{Timeout: timeout}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b), nil
}

func waitOK(addr, path string, timeout time.Duration, cmd *exec.Cmd) error {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		if cmd != nil && cmd.ProcessState != nil {
			return fmt.Errorf("exited: %v", cmd.ProcessState)
		}
		code, _, err := httpGet(addr, path, time.Second)
		if err == nil && code == 200 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("status %d", code)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s%s not answering 200 within %v: %v", addr, path, timeout, last)
}

type bench struct {
	dir   string
	logs  string
	app   *exec.Cmd
	redis *exec.Cmd
}

func (b *bench) start(peer string) (*running, error) {
	nextPorts()
	r := &running{name: peer, addr: peerAddr}
	log := filepath.Join(b.logs, peer+".log")
	var err error
	switch peer {
	case "direct":
		r.addr = appAddr
		return r, nil
	case "haproxy":
		cfg := filepath.Join(b.dir, "haproxy.cfg")
		// maxconn fits the machine's 20,000-fd limit (two fds per proxied stream).
		os.WriteFile(cfg, []byte(fmt.Sprintf(`global
  maxconn 9950
defaults
  mode http
  maxconn 9950
  # SSE: forward each event as it comes (without it HAProxy holds small writes ~200 ms)
  option http-no-delay
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend sse
  bind %s
  default_backend app
backend app
  server app %s
`, peerAddr, appAddr)), 0o644)
		r.cmd, err = spawn(peer, log, "haproxy", "-db", "-f", cfg)
	case "nginx":
		d := filepath.Join(b.dir, "nginx")
		os.MkdirAll(filepath.Join(d, "logs"), 0o755)
		cfg := filepath.Join(d, "nginx.conf")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 20000;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path %[1]s/tmp-body;
  proxy_temp_path %[1]s/tmp-proxy;
  fastcgi_temp_path %[1]s/tmp-fastcgi;
  uwsgi_temp_path %[1]s/tmp-uwsgi;
  scgi_temp_path %[1]s/tmp-scgi;
  upstream app { server %[3]s; keepalive 64; }
  server {
    listen %[2]s backlog=4096;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
`, d, peerAddr, appAddr)), 0o644)
		r.cmd, err = spawn(peer, log, "nginx", "-p", d, "-c", cfg, "-e", filepath.Join(d, "logs", "error.log"))
	case "sidecar-memory", "sidecar-redis":
		r.admin = adminAddr
		host, port, _ := net.SplitHostPort(appAddr)
		_, sse, _ := net.SplitHostPort(peerAddr)
		_, adm, _ := net.SplitHostPort(adminAddr)
		args := []string{"--app-host", host, "--app-port", port, "--listen-host", "127.0.0.1",
			"--sse-port", sse, "--admin-port", adm, "--service-namespace", "bench", "--service-name", "bench",
			"--pod-name", "bench-0", "--pod-ip", "127.0.0.1", "--max-streams", "30000", "--max-connections", "30000",
			"--lifecycle-socket", filepath.Join(b.dir, "sidecar.sock"), "--log-format", "json"}
		if peer == "sidecar-redis" {
			if err := flushRedis(); err != nil {
				return nil, fmt.Errorf("redis: %w", err)
			}
			args = append(args, "--store", "redis", "--redis-url", fmt.Sprintf("redis://127.0.0.1:%d", redisPort))
		} else {
			args = append(args, "--store", "memory")
		}
		r.cmd, err = spawn(peer, log, *sidecar, args...)
		if err == nil {
			err = waitOK(adminAddr, "/ready", 15*time.Second, r.cmd)
		}
	default:
		return nil, fmt.Errorf("unknown peer %s", peer)
	}
	if err == nil {
		err = waitOK(r.addr, "/healthz", 15*time.Second, r.cmd)
	}
	if err != nil {
		r.stop()
		return nil, fmt.Errorf("%s: %w (log %s)", peer, err, log)
	}
	return r, nil
}

func (r *running) pid() int {
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

func (r *running) stop() {
	if r.cmd == nil {
		return
	}
	grace := 3 * time.Second
	if strings.HasPrefix(r.name, "sidecar") {
		grace = 0 // its SIGTERM is a graceful drain of many seconds; nothing to keep here
	}
	stop(r.cmd, grace)
}

func redisCmd(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", redisPort), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write(b.Bytes()); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(line, "-") {
		return "", errors.New(strings.TrimSpace(line))
	}
	return strings.TrimSpace(line), nil
}

func flushRedis() error {
	_, err := redisCmd("FLUSHALL")
	return err
}

// ---- the sidecar's metrics ----

func scrape(admin string) (map[string]float64, error) {
	code, body, err := httpGet(admin, "/metrics", 3*time.Second)
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("/metrics: status %d", code)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' || strings.Contains(line, "{") {
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 2 {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				m[strings.TrimPrefix(f[0], "ssekeeper_")] = v
			}
		}
	}
	return m, nil
}

// settleRecording waits (bounded) until the sidecar has recorded or given up on what it forwarded.
func settleRecording(admin string, limit time.Duration) map[string]float64 {
	var m map[string]float64
	end := time.Now().Add(limit)
	for {
		var err error
		m, err = scrape(admin)
		if err == nil && m["events_recorded_total"]+m["events_unrecorded_total"] >= m["events_forwarded_total"] {
			return m
		}
		if time.Now().After(end) {
			return m
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- one measurement ----

func (b *bench) measure(f figure, peer string, rep, pos int) Measurement {
	m := Measurement{Figure: f.ID, Peer: peer, Rep: rep, Position: pos, Started: time.Now(), Load1: proc.Load1(), Values: map[string]float64{}}
	r, err := b.start(peer)
	if err != nil {
		m.Error = err.Error()
		return m
	}
	defer r.stop()
	args := append([]string{"-target", r.addr, "-timeout", fmt.Sprint(f.Timeout)}, f.Args...)
	if f.ID == "idle" {
		args = append(args, "-pids", strconv.Itoa(r.pid()))
		if peer == "sidecar-redis" && b.redis != nil {
			args = append(args, "-extra-pids", strconv.Itoa(b.redis.Process.Pid))
		}
	}
	cpu0 := proc.CPUSeconds(proc.Tree(r.pid()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(f.Timeout+10)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(*binDir, "load"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	stdout, err := cmd.Output()
	elapsed := time.Since(t0).Seconds()
	if r.admin != "" {
		m.Sidecar = settleRecording(r.admin, 4*time.Second)
	}
	cpu := proc.CPUSeconds(proc.Tree(r.pid())) - cpu0
	if err != nil {
		m.Error = fmt.Sprintf("load: %v: %s", err, strings.TrimSpace(stderr.String()))
		return m
	}
	m.Raw = json.RawMessage(bytes.TrimSpace(stdout))
	var raw map[string]any
	if err := json.Unmarshal(stdout, &raw); err != nil {
		m.Error = fmt.Sprintf("load output: %v", err)
		return m
	}
	num := func(k string) float64 { v, _ := raw[k].(float64); return v }
	m.Values["seconds"] = elapsed
	if peer != "direct" {
		m.Values["cpu_s"] = cpu
	}
	switch {
	case strings.HasPrefix(f.ID, "tp/"):
		m.Values["events_per_s"] = num("events_per_s")
		m.Values["bytes_per_s"] = num("bytes_per_s")
		m.Values["events"] = num("events")
		if peer != "direct" && num("events") > 0 {
			m.Values["cpu_s_per_m"] = cpu / (num("events") / 1e6)
		}
	case strings.HasPrefix(f.ID, "fan/"):
		for _, k := range []string{"p50_ms", "p99_ms", "max_ms", "delivered", "received", "expected", "opened"} {
			m.Values[k] = num(k)
		}
		if peer != "direct" && num("received") > 0 {
			m.Values["cpu_s_per_m"] = cpu / (num("received") / 1e6)
		}
	case f.ID == "idle":
		steps, _ := raw["steps"].([]any)
		var first, last map[string]any
		for _, s := range steps {
			st, _ := s.(map[string]any)
			n, _ := st["streams"].(float64)
			rss, _ := st["rss_kib"].(float64)
			ex, _ := st["extra_rss_kib"].(float64)
			open, _ := st["open"].(float64)
			m.Values[fmt.Sprintf("rss_kib_%d", int(n))] = rss
			m.Values[fmt.Sprintf("open_%d", int(n))] = open
			if ex > 0 {
				m.Values[fmt.Sprintf("redis_rss_kib_%d", int(n))] = ex
			}
			if first == nil {
				first = st
			}
			last = st
		}
		if first != nil && last != nil {
			o0, _ := first["open"].(float64)
			o1, _ := last["open"].(float64)
			if o1 > o0 {
				r0, _ := first["rss_kib"].(float64)
				r1, _ := last["rss_kib"].(float64)
				m.Values["kib_per_stream"] = (r1 - r0) / (o1 - o0)
				e0, _ := first["extra_rss_kib"].(float64)
				e1, _ := last["extra_rss_kib"].(float64)
				if e1 > 0 {
					m.Values["redis_kib_per_stream"] = (e1 - e0) / (o1 - o0)
				}
				m.Values["open"] = o1
			} else {
				m.Error = "no idle stream opened"
			}
		}
	case f.ID == "connrate":
		m.Values["per_s"] = num("per_s")
		m.Values["failed"] = num("failed")
	}
	if s := m.Sidecar; s != nil {
		fw, rec, unrec := s["events_forwarded_total"], s["events_recorded_total"], s["events_unrecorded_total"]
		m.Values["forwarded"], m.Values["recorded"], m.Values["unrecorded"] = fw, rec, unrec
		// The recorder also stores one End entry per stream that ended; those are not events.
		ended := m.Values["opened"]
		if strings.HasPrefix(f.ID, "tp/") {
			ended = mustAtoi(argOf(f, "-streams"))
		}
		if fw > 0 {
			m.Values["recorded_ratio"] = max(0, rec-ended) / fw
		}
	}
	return m
}

func mustAtoi(s string) float64 {
	v, _ := strconv.Atoi(s)
	return float64(v)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func summarize(ms []Measurement) map[string]map[string]map[string]float64 {
	acc := map[string]map[string]map[string][]float64{}
	for _, m := range ms {
		if m.Error != "" {
			continue
		}
		if acc[m.Figure] == nil {
			acc[m.Figure] = map[string]map[string][]float64{}
		}
		if acc[m.Figure][m.Peer] == nil {
			acc[m.Figure][m.Peer] = map[string][]float64{}
		}
		for k, v := range m.Values {
			acc[m.Figure][m.Peer][k] = append(acc[m.Figure][m.Peer][k], v)
		}
		acc[m.Figure][m.Peer]["load1"] = append(acc[m.Figure][m.Peer]["load1"], m.Load1)
	}
	out := map[string]map[string]map[string]float64{}
	for f, ps := range acc {
		out[f] = map[string]map[string]float64{}
		for p, vs := range ps {
			out[f][p] = map[string]float64{}
			for k, v := range vs {
				out[f][p][k] = median(v)
			}
		}
	}
	return out
}

func cmdOut(name string, args ...string) string {
	b, _ := exec.Command(name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line
}

func machine() map[string]any {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, model, _ = strings.Cut(l, ":")
				model = strings.TrimSpace(model)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(l)
		if len(f) >= 2 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			mem = fmt.Sprintf("%.1f GiB", kb/1024/1024)
		}
	}
	var u syscall.Utsname
	syscall.Uname(&u)
	kernel := ""
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		kernel += string(rune(c))
	}
	return map[string]any{"cpu": model, "cores": numCPU(), "memory": mem, "kernel": kernel}
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + boolInt(strings.HasPrefix(string(b), "processor"))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func main() {
	flag.Parse()
	full := *mode == "full"
	reps := *repsFlag
	if reps <= 0 {
		reps = 1
		if full {
			reps = 2
		}
	}
	b := &bench{dir: filepath.Join(*out, "work"), logs: filepath.Join(*out, "logs")}
	os.RemoveAll(b.dir)
	os.RemoveAll(b.logs)
	for _, d := range []string{b.dir, b.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			fatal(err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "bench: %v, stopping\n", s)
		stopAll()
		os.Exit(130)
	}()
	defer stopAll()

	var err error
	b.app, err = spawn("app", filepath.Join(b.logs, "app.log"), filepath.Join(*binDir, "app"), "-listen", appAddr)
	if err == nil {
		err = waitOK(appAddr, "/healthz", 10*time.Second, b.app)
	}
	if err != nil {
		fatal(fmt.Errorf("app: %w", err))
	}
	b.redis, err = spawn("redis", filepath.Join(b.logs, "redis.log"), "redis-server", "--port", strconv.Itoa(redisPort),
		"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", b.dir)
	if err == nil {
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err = redisCmd("PING"); err == nil || time.Now().After(end) {
				break
			}
		}
	}
	if err != nil {
		fatal(fmt.Errorf("redis-server: %w", err))
	}

	figs := figures(full)
	if *only != "" {
		want := strings.Split(*only, ",")
		figs = slices.DeleteFunc(figs, func(f figure) bool { return !slices.Contains(want, f.ID) })
	}
	if *onlyPeer != "" {
		want := strings.Split(*onlyPeer, ",")
		peers = slices.DeleteFunc(peers, func(p string) bool { return !slices.Contains(want, p) })
	}
	res := Results{Meta: map[string]any{
		"date":           time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		"mode":           *mode,
		"reps":           reps,
		"command":        *command,
		"machine":        machine(),
		"load1_at_start": proc.Load1(),
		"versions": map[string]string{
			"haproxy": cmdOut("haproxy", "-v"),
			"nginx":   cmdOut("nginx", "-v"),
			"redis":   cmdOut("redis-server", "--version"),
			"sidecar": os.Getenv("BENCH_SIDECAR_REV"),
			"go":      cmdOut("go", "version"),
		},
	}}
	start := time.Now()
	k := 0
	for _, f := range figs {
		for rep := 0; rep < reps; rep++ {
			order := slices.Clone(peers)
			if f.Bcast != nil {
				order = slices.Clone(bcastPeers)
			}
			rot := k % len(order)
			order = append(order[rot:], order[:rot]...)
			k++
			for pos, p := range order {
				if f.SkipDirect && p == "direct" {
					continue
				}
				var m Measurement
				if f.Bcast != nil {
					m = b.measureBroadcast(f, p, rep, pos)
				} else {
					m = b.measure(f, p, rep, pos)
				}
				status := "ok"
				if m.Error != "" {
					status = "FAILED: " + m.Error
					res.Failures = append(res.Failures, fmt.Sprintf("%s %s rep %d: %s", f.ID, p, rep, m.Error))
				}
				fmt.Fprintf(os.Stderr, "bench: %-10s %-15s rep %d  %5.1fs  load %.2f  %s\n", f.ID, p, rep, time.Since(m.Started).Seconds(), m.Load1, status)
				res.Measurements = append(res.Measurements, m)
			}
		}
	}
	res.Meta["load1_at_end"] = proc.Load1()
	res.Meta["seconds"] = time.Since(start).Seconds()
	res.Summary = summarize(res.Measurements)
	js, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "results.json"), js, 0o644); err != nil {
		fatal(err)
	}
	md := table(res, figs)
	if err := os.WriteFile(filepath.Join(*out, "results.md"), []byte(md), 0o644); err != nil {
		fatal(err)
	}
	fmt.Print(md)
	// A peer that never ran at all breaks the bench; a figure that failed now and then is in the table.
	broken := false
	var ran []string
	if slices.ContainsFunc(figs, func(f figure) bool { return f.Bcast == nil }) {
		ran = slices.Clone(peers)
	}
	if slices.ContainsFunc(figs, func(f figure) bool { return f.Bcast != nil }) {
		ran = append(ran, bcastPeers...)
	}
	for _, p := range ran {
		okAny := false
		for _, m := range res.Measurements {
			if m.Peer == p && m.Error == "" {
				okAny = true
			}
		}
		if !okAny {
			fmt.Fprintf(os.Stderr, "bench: peer %s did not complete any measurement\n", p)
			broken = true
		}
	}
	for _, f := range res.Failures {
		fmt.Fprintln(os.Stderr, "bench: failed:", f)
	}
	if broken || (!full && len(res.Failures) > 0) {
		stopAll()
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	stopAll()
	os.Exit(2)
}
