// The bench's load generator: opens streams through a target, parses SSE, prints one JSON object.
// Every mode is bounded in count and in time (-timeout is a hard stop).
//
//	-mode throughput  K firehose streams of S-byte events for D seconds each: events/s, bytes/s
//	-mode fanout      K paced streams, R events/s, C events each: latency (now - the app's
//	                  timestamp) p50/p99/max, fraction delivered
//	-mode idle        idle streams opened in steps; RSS of -pids (and -extra-pids) at each step
//	-mode connrate    W workers open a stream, wait for its first event, close: streams/s
//	-mode broadcast   K subscribers of one path spread over -targets, reconnecting with
//	                  `Last-Event-ID`: latency, fraction delivered, duplicates (broadcast.go)
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ssekeeper.dev/bench/internal/proc"
)

var (
	target  = flag.String("target", "127.0.0.1:18081", "host:port to open streams on")
	mode    = flag.String("mode", "throughput", "throughput | fanout | idle | connrate | broadcast")
	streams = flag.Int("streams", 1, "streams (throughput, fanout)")
	size    = flag.Int("size", 100, "event size in bytes on the wire")
	dur     = flag.Float64("dur", 2, "seconds: firehose length (throughput), run time (connrate)")
	rate    = flag.Float64("rate", 1, "events/s per stream (fanout)")
	count   = flag.Int("count", 5, "events per stream (fanout)")
	steps   = flag.String("steps", "0,100", "stream counts at which RSS is taken (idle)")
	pids    = flag.String("pids", "", "comma-separated root pids whose process trees are measured (idle)")
	extra   = flag.String("extra-pids", "", "further root pids measured apart (idle), e.g. redis-server")
	settle  = flag.Float64("settle", 1, "seconds to wait before each RSS reading (idle)")
	workers = flag.Int("workers", 16, "workers (connrate)")
	maxN    = flag.Int("max", 100000, "most streams opened (connrate)")
	conc    = flag.Int("open-concurrency", 64, "streams being opened at once (fanout, idle)")
	timeout = flag.Float64("timeout", 60, "hard limit in seconds for the whole run")
)

func main() {
	flag.Parse()
	deadline := time.Now().Add(time.Duration(*timeout * float64(time.Second)))
	go func() {
		time.Sleep(time.Until(deadline) + 2*time.Second)
		fmt.Fprintln(os.Stderr, "load: hard timeout")
		os.Exit(3)
	}()
	var out any
	var err error
	switch *mode {
	case "throughput":
		out, err = throughput(deadline)
	case "fanout":
		out, err = fanout(deadline)
	case "idle":
		out, err = idle(deadline)
	case "connrate":
		out, err = connrate(deadline)
	case "broadcast":
		out, err = broadcastRun(deadline)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// open connects, sends a GET and reads the response head; the body is returned as a reader.
func open(path string, deadline time.Time, bufSize int) (net.Conn, io.Reader, error) {
	return openAt(*target, path, "", deadline, bufSize)
}

// openAt is open on addr, with a `Last-Event-ID` when lastID is not empty.
func openAt(addr, path, lastID string, deadline time.Time, bufSize int) (net.Conn, io.Reader, error) {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(deadline)
	req := "GET " + path + " HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
	if lastID != "" {
		req += "Last-Event-ID: " + lastID + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(c, bufSize)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		c.Close()
		return nil, nil, fmt.Errorf("status %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return c, resp.Body, nil
}

type tpResult struct {
	Streams    int      `json:"streams"`
	OK         int      `json:"ok"`
	Errors     []string `json:"errors,omitempty"`
	Events     int64    `json:"events"`
	Bytes      int64    `json:"bytes"`
	Seconds    float64  `json:"seconds"`
	EventsPerS float64  `json:"events_per_s"`
	BytesPerS  float64  `json:"bytes_per_s"`
}

var dataMark = []byte("\ndata:")

// countEvents reads body to its end and counts events (lines starting with `data:`; the bench's
// events have one each).
func countEvents(body io.Reader) (events, n int64, err error) {
	const carry = 5 // len(dataMark)-1: a mark split across reads is counted once
	buf := make([]byte, carry+256<<10)
	copy(buf, "\n    ") // the body's first line counts as after a newline
	first := true
	for {
		k, rerr := body.Read(buf[carry:])
		if k > 0 {
			n += int64(k)
			region := buf[:carry+k]
			if first {
				// "\n" then the first bytes: shift so a body starting with "data:" counts
				region = append([]byte{'\n'}, buf[carry:carry+k]...)
				first = false
			}
			events += int64(bytes.Count(region, dataMark))
			if k >= carry {
				copy(buf, buf[carry+k-carry:carry+k])
			} else {
				copy(buf, buf[k:carry+k])
			}
		}
		if rerr == io.EOF {
			return events, n, nil
		}
		if rerr != nil {
			return events, n, rerr
		}
	}
}

func throughput(deadline time.Time) (any, error) {
	path := fmt.Sprintf("/firehose?size=%d&dur=%g", *size, *dur)
	res := tpResult{Streams: *streams}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, body, err := open(path, deadline, 64<<10)
			if err == nil {
				var ev, n int64
				ev, n, err = countEvents(body)
				c.Close()
				mu.Lock()
				res.Events += ev
				res.Bytes += n
				mu.Unlock()
			}
			mu.Lock()
			if err != nil {
				res.Errors = append(res.Errors, err.Error())
			} else {
				res.OK++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.EventsPerS = float64(res.Events) / res.Seconds
	res.BytesPerS = float64(res.Bytes) / res.Seconds
	if res.OK == 0 {
		return nil, fmt.Errorf("no stream completed: %v", res.Errors)
	}
	return res, nil
}

type fanResult struct {
	Streams   int      `json:"streams"`
	Opened    int      `json:"opened"`
	Errors    []string `json:"errors,omitempty"`
	Expected  int64    `json:"expected"`
	Received  int64    `json:"received"`
	Delivered float64  `json:"delivered"`
	P50ms     float64  `json:"p50_ms"`
	P99ms     float64  `json:"p99_ms"`
	MaxMs     float64  `json:"max_ms"`
	OpenS     float64  `json:"open_s"`
	Seconds   float64  `json:"seconds"`
}

// readPaced parses events from body until its end, the expected count or the deadline, and
// appends each event's latency (ns) to lat.
func readPaced(body io.Reader, want int, lat []int64) ([]int64, error) {
	br := bufio.NewReaderSize(body, 2048)
	got := 0
	var ts int64 = -1
	for got < want {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return lat, nil
			}
			return lat, err
		}
		if len(line) <= 2 && (line[0] == '\n' || line[0] == '\r') {
			if ts >= 0 {
				lat = append(lat, time.Now().UnixNano()-ts)
				got++
				ts = -1
			}
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			rest = bytes.TrimLeft(rest, " ")
			if sp := bytes.IndexAny(rest, " \r\n"); sp > 0 {
				rest = rest[:sp]
			}
			if v, err := strconv.ParseInt(string(rest), 10, 64); err == nil {
				ts = v
			} else {
				ts = time.Now().UnixNano() // an event without our timestamp: counted, no latency
			}
		}
	}
	return lat, nil
}

func pct(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return float64(sorted[i]) / 1e6
}

// openMany opens k streams on path with bounded concurrency; conns[i] is nil where it failed.
func openMany(k int, path string, deadline time.Time) ([]net.Conn, []io.Reader, []string) {
	conns := make([]net.Conn, k)
	bodies := make([]io.Reader, k)
	var errs []string
	var mu sync.Mutex
	sem := make(chan struct{}, *conc)
	var wg sync.WaitGroup
	for i := 0; i < k; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, b, err := open(path, deadline, 2048)
			if err != nil {
				mu.Lock()
				if len(errs) < 20 {
					errs = append(errs, err.Error())
				}
				mu.Unlock()
				return
			}
			conns[i], bodies[i] = c, b
		}()
	}
	wg.Wait()
	return conns, bodies, errs
}

func fanout(deadline time.Time) (any, error) {
	path := fmt.Sprintf("/paced?rate=%g&count=%d&size=%d", *rate, *count, *size)
	res := fanResult{Streams: *streams, Expected: int64(*streams) * int64(*count)}
	start := time.Now()
	// Streams read from the moment they open: an event sent while others still open counts.
	var mu sync.Mutex
	var all []int64
	var wg sync.WaitGroup
	var opened atomic.Int64
	sem := make(chan struct{}, *conc)
	for i := 0; i < *streams; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, body, err := open(path, deadline, 2048)
			<-sem
			if err != nil {
				mu.Lock()
				if len(res.Errors) < 20 {
					res.Errors = append(res.Errors, err.Error())
				}
				mu.Unlock()
				return
			}
			opened.Add(1)
			lat, _ := readPaced(body, *count, make([]int64, 0, *count))
			c.Close()
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	res.OpenS = time.Since(start).Seconds()
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Opened = int(opened.Load())
	if res.Opened == 0 {
		return nil, fmt.Errorf("no stream opened: %v", res.Errors)
	}
	slices.Sort(all)
	res.Received = int64(len(all))
	res.Delivered = float64(res.Received) / float64(res.Expected)
	res.P50ms, res.P99ms, res.MaxMs = pct(all, 0.50), pct(all, 0.99), pct(all, 1)
	return res, nil
}

type idleStep struct {
	Streams  int   `json:"streams"`
	Open     int   `json:"open"`
	RSSKiB   int64 `json:"rss_kib"`
	ExtraKiB int64 `json:"extra_rss_kib"`
}

func parsePids(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, v)
		}
	}
	return out
}

func trees(roots []int) []int {
	var out []int
	for _, r := range roots {
		out = append(out, proc.Tree(r)...)
	}
	return out
}

func idle(deadline time.Time) (any, error) {
	roots, extraRoots := parsePids(*pids), parsePids(*extra)
	hold := time.Until(deadline).Seconds() + 5
	path := fmt.Sprintf("/paced?rate=0&hold=%.0f", min(hold, 120))
	var steps_ []int
	for _, f := range strings.Split(*steps, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			steps_ = append(steps_, v)
		}
	}
	var all []net.Conn
	var out []idleStep
	var errs []string
	open := 0
	for _, n := range steps_ {
		if k := n - len(all); k > 0 {
			conns, bodies, e := openMany(k, path, deadline)
			errs = append(errs, e...)
			// Each stream has its first event before it counts as open.
			var wg sync.WaitGroup
			var ok atomic.Int64
			for i, c := range conns {
				if c == nil {
					continue
				}
				all = append(all, c)
				wg.Add(1)
				go func(b io.Reader) {
					defer wg.Done()
					if l, _ := readPaced(b, 1, nil); len(l) == 1 {
						ok.Add(1)
					}
				}(bodies[i])
			}
			wg.Wait()
			open += int(ok.Load())
		}
		time.Sleep(time.Duration(*settle * float64(time.Second)))
		out = append(out, idleStep{Streams: n, Open: open, RSSKiB: proc.RSSKiB(trees(roots)), ExtraKiB: proc.RSSKiB(trees(extraRoots))})
	}
	for _, c := range all {
		c.Close()
	}
	if len(steps_) > 1 && open == 0 {
		return nil, fmt.Errorf("no idle stream opened: %v", errs)
	}
	return map[string]any{"steps": out, "errors": errs}, nil
}

type connResult struct {
	Streams int64    `json:"streams"`
	Failed  int64    `json:"failed"`
	Errors  []string `json:"errors,omitempty"`
	Seconds float64  `json:"seconds"`
	PerS    float64  `json:"per_s"`
}

func connrate(deadline time.Time) (any, error) {
	end := time.Now().Add(time.Duration(*dur * float64(time.Second)))
	if end.After(deadline) {
		end = deadline
	}
	path := "/paced?rate=0&hold=1" // short, so a proxy that keeps the upstream open frees it soon
	var okN, failN, issued atomic.Int64
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && issued.Add(1) <= int64(*maxN) {
				c, body, err := open(path, end.Add(2*time.Second), 2048)
				if err == nil {
					var l []int64
					l, err = readPaced(body, 1, nil)
					if err == nil && len(l) != 1 {
						err = errors.New("stream ended before its first event")
					}
					if tc, ok := c.(*net.TCPConn); ok {
						tc.SetLinger(0) // no TIME_WAIT pile-up on the client side
					}
					c.Close()
				}
				if err != nil {
					failN.Add(1)
					mu.Lock()
					if len(errs) < 10 {
						errs = append(errs, err.Error())
					}
					mu.Unlock()
					if failN.Load() > 1000 {
						return
					}
					continue
				}
				okN.Add(1)
			}
		}()
	}
	wg.Wait()
	res := connResult{Streams: okN.Load(), Failed: failN.Load(), Errors: errs, Seconds: time.Since(start).Seconds()}
	res.PerS = float64(res.Streams) / res.Seconds
	if res.Streams == 0 {
		return nil, fmt.Errorf("no stream opened: %v", errs)
	}
	return res, nil
}
