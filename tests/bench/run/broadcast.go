// The broadcast row (issue 12 §3): one path's subscribers spread over three pods, served two ways
// in the same run:
//
//   - app-pubsub: the seed pattern, no ssekeeper. Three app replicas, each with one Redis
//     SUBSCRIBE, fan the channel out to their own clients; replica 0 PUBLISHes the events.
//   - sidecar-broadcast: three sidecars (Redis store, `--broadcast /bcast`) in front of the app;
//     the one holding the path's lease opens the app's /bcast once, every sidecar tails the
//     path's Redis Stream and fans it out to its clients.
//
// Latency is the app's send time (in each event) to the subscriber's receive time, same clock.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"ssekeeper.dev/bench/internal/proc"
)

var bcastPeers = []string{"app-pubsub", "sidecar-broadcast"}

var bcastLabel = map[string]string{
	"app-pubsub":        "app's own Redis pub/sub fan-out (3 replicas)",
	"sidecar-broadcast": "ssekeeper broadcast (3 sidecars, 1 upstream)",
}

// bcastSpec is the broadcast figure's load.
type bcastSpec struct {
	Subs   int     // subscribers, spread round-robin over the three pods
	Rate   float64 // events/s the app sends
	Window float64 // seconds measured once every subscriber is open
}

const bcastPods = 3

// bgroup is one broadcast peer: its processes, where subscribers connect, the apps' /stats.
type bgroup struct {
	cmds    []*exec.Cmd
	targets []string
	apps    []string
	admins  []string
	path    string
}

func (g *bgroup) stop() {
	for _, c := range g.cmds {
		stop(c, 0)
	}
}

func (g *bgroup) pids() []int {
	var out []int
	for _, c := range g.cmds {
		out = append(out, proc.Tree(c.Process.Pid)...)
	}
	return out
}

func (b *bench) startBroadcast(peer string, spec bcastSpec) (*bgroup, error) {
	if err := flushRedis(); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	g := &bgroup{}
	redis := fmt.Sprintf("127.0.0.1:%d", redisPort)
	app := func(i int, extra ...string) (string, error) {
		nextPorts()
		addr := peerAddr
		args := append([]string{"-listen", addr, "-bcast-rate", fmt.Sprint(spec.Rate), "-bcast-size", "100"}, extra...)
		cmd, err := spawn("app", filepath.Join(b.logs, fmt.Sprintf("%s-app-%d.log", peer, i)), filepath.Join(*binDir, "app"), args...)
		if err != nil {
			return "", err
		}
		g.cmds = append(g.cmds, cmd)
		g.apps = append(g.apps, addr)
		return addr, waitOK(addr, "/healthz", 10*time.Second, cmd)
	}
	fail := func(err error) (*bgroup, error) {
		g.stop()
		return nil, fmt.Errorf("%s: %w (logs in %s)", peer, err, b.logs)
	}
	switch peer {
	case "app-pubsub":
		g.path = "/sub"
		for i := 0; i < bcastPods; i++ {
			extra := []string{"-redis", redis}
			if i == 0 {
				extra = append(extra, "-publish-rate", fmt.Sprint(spec.Rate))
			}
			addr, err := app(i, extra...)
			if err != nil {
				return fail(err)
			}
			g.targets = append(g.targets, addr)
		}
	case "sidecar-broadcast":
		g.path = "/bcast"
		appAt, err := app(0)
		if err != nil {
			return fail(err)
		}
		host, port, _ := net.SplitHostPort(appAt)
		for i := 0; i < bcastPods; i++ {
			nextPorts()
			_, sse, _ := net.SplitHostPort(peerAddr)
			_, adm, _ := net.SplitHostPort(adminAddr)
			args := []string{"--app-host", host, "--app-port", port, "--listen-host", "127.0.0.1",
				"--sse-port", sse, "--admin-port", adm, "--service-namespace", "bench", "--service-name", "bench",
				"--pod-name", fmt.Sprintf("bench-%d", i), "--pod-ip", "127.0.0.1", "--max-streams", "30000",
				"--max-connections", "30000", "--lifecycle-socket", filepath.Join(b.dir, fmt.Sprintf("sidecar-%d.sock", i)),
				"--log-format", "json", "--store", "redis", "--redis-url", "redis://" + redis, "--broadcast", g.path}
			cmd, err := spawn(peer, filepath.Join(b.logs, fmt.Sprintf("%s-%d.log", peer, i)), *sidecar, args...)
			if err != nil {
				return fail(err)
			}
			g.cmds = append(g.cmds, cmd)
			if err := waitOK(adminAddr, "/ready", 15*time.Second, cmd); err != nil {
				return fail(err)
			}
			g.targets = append(g.targets, peerAddr)
			g.admins = append(g.admins, adminAddr)
		}
	default:
		return nil, fmt.Errorf("unknown broadcast peer %s", peer)
	}
	return g, nil
}

// redisStats reads INFO's numeric fields (commands processed, network bytes).
func redisStats() map[string]float64 {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", redisPort), 2*time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "*1\r\n$4\r\nINFO\r\n"); err != nil {
		return nil
	}
	br := bufio.NewReader(c)
	head, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		return nil
	}
	n, _ := strconv.Atoi(strings.TrimSpace(head[1:]))
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				out[k] = f
			}
		}
	}
	return out
}

func appStats(addr string) map[string]float64 {
	_, body, err := httpGet(addr, "/stats", 2*time.Second)
	if err != nil {
		return nil
	}
	var m map[string]float64
	json.Unmarshal([]byte(body), &m)
	return m
}

func (b *bench) measureBroadcast(f figure, peer string, rep, pos int) Measurement {
	spec := *f.Bcast
	m := Measurement{Figure: f.ID, Peer: peer, Rep: rep, Position: pos, Started: time.Now(), Load1: proc.Load1(), Values: map[string]float64{}}
	g, err := b.startBroadcast(peer, spec)
	if err != nil {
		m.Error = err.Error()
		return m
	}
	defer g.stop()
	if peer == "sidecar-broadcast" {
		// The path's holder is elected and its upstream open before the first subscriber.
		if err := waitHeld(g.admins, 10*time.Second); err != nil {
			m.Error = err.Error()
			return m
		}
	}
	pids := g.pids()
	cpu0, rcpu0 := proc.CPUSeconds(pids), proc.CPUSeconds([]int{b.redis.Process.Pid})
	rs0 := redisStats()
	args := []string{"-mode", "broadcast", "-targets", strings.Join(g.targets, ","), "-path", g.path,
		"-streams", strconv.Itoa(spec.Subs), "-window", fmt.Sprint(spec.Window), "-timeout", fmt.Sprint(f.Timeout)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(f.Timeout+10)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(*binDir, "load"), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	stdout, err := cmd.Output()
	elapsed := time.Since(t0).Seconds()
	rss := proc.RSSKiB(g.pids())
	cpu, rcpu := proc.CPUSeconds(pids)-cpu0, proc.CPUSeconds([]int{b.redis.Process.Pid})-rcpu0
	rs1 := redisStats()
	if err != nil {
		m.Error = fmt.Sprintf("load: %v: %s", err, strings.TrimSpace(stderr.String()))
		return m
	}
	m.Raw = json.RawMessage(strings.TrimSpace(string(stdout)))
	var raw map[string]float64
	json.Unmarshal(stdout, &raw) // the errors array is not a number: it stays out
	for _, k := range []string{"p50_ms", "p99_ms", "max_ms", "delivered", "received", "expected", "opened", "duplicates", "reconnects", "ids", "open_s"} {
		m.Values[k] = raw[k]
	}
	m.Values["seconds"] = elapsed
	m.Values["tier_cpu_s"] = cpu
	if raw["received"] > 0 {
		m.Values["tier_cpu_s_per_m"] = cpu / (raw["received"] / 1e6)
	}
	m.Values["tier_rss_kib"] = float64(rss)
	m.Values["redis_cpu_pct"] = 100 * rcpu / elapsed
	if rs0 != nil && rs1 != nil {
		m.Values["redis_cmds_per_s"] = (rs1["total_commands_processed"] - rs0["total_commands_processed"]) / elapsed
		m.Values["redis_net_kib_per_s"] = (rs1["total_net_output_bytes"] + rs1["total_net_input_bytes"] -
			rs0["total_net_output_bytes"] - rs0["total_net_input_bytes"]) / 1024 / elapsed
	}
	var streams float64
	for _, a := range g.apps {
		s := appStats(a)
		streams += s["bcast_opened"] + s["sub_opened"]
	}
	m.Values["app_streams"] = streams
	return m
}

// waitHeld waits until one of the sidecars holds the broadcast path's upstream.
func waitHeld(admins []string, limit time.Duration) error {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for _, a := range admins {
			_, body, err := httpGet(a, "/metrics", 2*time.Second)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "ssekeeper_broadcast_upstream_held{") && strings.HasSuffix(strings.TrimSpace(l), " 1") {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("no sidecar took the broadcast path within %v", limit)
}

// bcastTable is the broadcast section of results.md.
func bcastTable(res Results, f figure) string {
	s := res.Summary[f.ID]
	if s == nil {
		return ""
	}
	var b strings.Builder
	spec := f.Bcast
	fmt.Fprintf(&b, "\n### Broadcast: %d subscribers of one path over %d pods, %g events/s of 100 B, %g s measured\n\n",
		spec.Subs, bcastPods, spec.Rate, spec.Window)
	b.WriteString("- latency: the app's send time in each event to the subscriber's receive time (same clock); delivered: events received over (ids sent in the window × subscribers); a subscriber whose stream ends comes back with `Last-Event-ID`\n")
	b.WriteString("- app streams: streams the app served (ssekeeper: the broadcast upstream; pub/sub: one per subscriber connection); Redis: its commands/s, CPU and network over the whole run (subscribers connecting included); pods: CPU and RSS of the serving processes (3 apps; or 1 app + 3 sidecars)\n")
	b.WriteString("- ratio: ssekeeper over the app's own fan-out, same run\n\n")
	fmt.Fprintf(&b, "| figure | %s | %s | ratio |\n|---|---|---|---|\n", bcastLabel["app-pubsub"], bcastLabel["sidecar-broadcast"])
	rows := []struct {
		key, label string
		format     func(float64) string
	}{
		{"p50_ms", "latency p50", ms}, {"p99_ms", "latency p99", ms}, {"max_ms", "latency max", ms},
		{"delivered", "delivered", pctf}, {"duplicates", "duplicates", si}, {"reconnects", "reconnects", si},
		{"opened", "subscribers open", si}, {"app_streams", "app streams", si},
		{"redis_cmds_per_s", "Redis commands/s", si}, {"redis_cpu_pct", "Redis CPU", func(v float64) string { return fmt.Sprintf("%.1f%%", v) }},
		{"redis_net_kib_per_s", "Redis network", func(v float64) string { return fmt.Sprintf("%.0f KiB/s", v) }},
		{"tier_cpu_s_per_m", "pods' CPU s per million deliveries", secs}, {"tier_rss_kib", "pods' RSS", mib},
	}
	for _, r := range rows {
		cells := []string{r.label}
		var vals [2]float64
		var have [2]bool
		for i, p := range bcastPeers {
			v, ok := s[p][r.key]
			vals[i], have[i] = v, ok
			if !ok {
				cells = append(cells, "—")
				continue
			}
			cells = append(cells, r.format(v))
		}
		rc := ""
		if have[0] && have[1] && vals[0] != 0 {
			rc = ratio(vals[1], vals[0])
		}
		cells = append(cells, rc)
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}
