package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	targets = flag.String("targets", "", "comma-separated host:port the subscribers are spread over (broadcast; default -target)")
	path    = flag.String("path", "/bcast", "the broadcast path (broadcast)")
	window  = flag.Float64("window", 5, "seconds of events measured once every subscriber is open (broadcast)")
	grace   = flag.Float64("grace", 2, "seconds after the window for its last events to arrive (broadcast)")
)

type bcastResult struct {
	Streams    int      `json:"streams"`
	Opened     int      `json:"opened"`
	Errors     []string `json:"errors,omitempty"`
	Reconnects int64    `json:"reconnects"`
	// Events whose send time is in the window: the newest id less the oldest, plus one.
	Ids        int64   `json:"ids"`
	Expected   int64   `json:"expected"`
	Received   int64   `json:"received"`
	Duplicates int64   `json:"duplicates"`
	Delivered  float64 `json:"delivered"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	OpenS      float64 `json:"open_s"`
	WindowS    float64 `json:"window_s"`
}

// subscriber is one client of the broadcast path, as an EventSource is: it reads events, and
// when its stream ends it comes back (to the same address) with the last id it saw.
type subscriber struct {
	addr   string
	lastID string
	prev   uint64 // the last id read, to count duplicates (an id not above it)
	lat    []int64
	lo, hi uint64 // ids of the window's first and last events seen
	dups   int64
}

// read parses events until the stream ends or the deadline; events sent in [w0, w1) count.
func (s *subscriber) read(body io.Reader, win *[2]atomic.Int64) error {
	br := bufio.NewReaderSize(body, 2048)
	var id uint64
	var ts int64 = -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if ts >= 0 {
				now := time.Now().UnixNano()
				if id != 0 && id <= s.prev {
					s.dups++
				}
				s.prev = max(s.prev, id)
				if ts >= win[0].Load() && ts < win[1].Load() {
					s.lat = append(s.lat, now-ts)
					if s.lo == 0 || id < s.lo {
						s.lo = id
					}
					s.hi = max(s.hi, id)
				}
			}
			id, ts = 0, -1
		case bytes.HasPrefix(line, []byte("id:")):
			v := strings.TrimSpace(string(line[3:]))
			s.lastID = v
			id, _ = strconv.ParseUint(v, 10, 64)
		case bytes.HasPrefix(line, []byte("data:")):
			f := bytes.Fields(line[5:])
			if len(f) > 0 {
				ts, _ = strconv.ParseInt(string(f[0]), 10, 64)
			}
		}
	}
}

func broadcastRun(deadline time.Time) (any, error) {
	addrs := strings.Split(*targets, ",")
	if *targets == "" {
		addrs = []string{*target}
	}
	res := bcastResult{Streams: *streams, WindowS: *window}
	subs := make([]*subscriber, *streams)
	var mu sync.Mutex
	var reconnects atomic.Int64
	var opened sync.WaitGroup // every first open attempt done
	var done sync.WaitGroup
	// The window's bounds in unix ns; nothing counts before every subscriber is open.
	var win [2]atomic.Int64
	win[0].Store(1 << 62)
	win[1].Store(1 << 62)
	stopAt := deadline
	var stopMu sync.Mutex
	live := map[net.Conn]bool{} // open streams, cut at the window's end
	sem := make(chan struct{}, *conc)
	start := time.Now()
	for i := range subs {
		s := &subscriber{addr: addrs[i%len(addrs)]}
		subs[i] = s
		opened.Add(1)
		done.Add(1)
		sem <- struct{}{}
		go func() {
			defer done.Done()
			first := true
			for {
				stopMu.Lock()
				end := stopAt
				stopMu.Unlock()
				if time.Now().After(end) {
					break
				}
				c, body, err := openAt(s.addr, *path, s.lastID, end, 2048)
				if err == nil {
					stopMu.Lock()
					live[c] = true
					c.SetDeadline(stopAt)
					stopMu.Unlock()
				}
				if first {
					first = false
					<-sem
					mu.Lock()
					if err != nil {
						res.Errors = append(res.Errors, err.Error())
					} else {
						res.Opened++
					}
					mu.Unlock()
					opened.Done()
					if err != nil {
						return
					}
				} else if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				s.read(body, &win)
				stopMu.Lock()
				delete(live, c)
				stopMu.Unlock()
				c.Close()
				stopMu.Lock()
				end = stopAt
				stopMu.Unlock()
				if time.Now().Before(end) {
					reconnects.Add(1)
					time.Sleep(100 * time.Millisecond) // the retry hint's order of magnitude
				}
			}
		}()
	}
	opened.Wait()
	res.OpenS = time.Since(start).Seconds()
	if res.Opened == 0 {
		return nil, fmt.Errorf("no subscriber opened: %v", firstErrors(res.Errors))
	}
	ws := time.Now().Add(500 * time.Millisecond)
	we := ws.Add(time.Duration(*window * float64(time.Second)))
	win[0].Store(ws.UnixNano())
	win[1].Store(we.UnixNano())
	stopMu.Lock()
	stopAt = we.Add(time.Duration(*grace * float64(time.Second)))
	if stopAt.After(deadline) {
		stopAt = deadline
	}
	for c := range live {
		c.SetDeadline(stopAt)
	}
	stopMu.Unlock()
	done.Wait()
	var all []int64
	var lo, hi uint64
	for _, s := range subs {
		all = append(all, s.lat...)
		res.Duplicates += s.dups
		if s.lo != 0 && (lo == 0 || s.lo < lo) {
			lo = s.lo
		}
		hi = max(hi, s.hi)
	}
	slices.Sort(all)
	res.Reconnects = reconnects.Load()
	res.Received = int64(len(all))
	if hi >= lo && lo > 0 {
		res.Ids = int64(hi-lo) + 1
	}
	res.Expected = res.Ids * int64(res.Opened)
	if res.Expected > 0 {
		res.Delivered = float64(res.Received) / float64(res.Expected)
	}
	res.P50ms, res.P99ms, res.MaxMs = pct(all, 0.50), pct(all, 0.99), pct(all, 1)
	if len(res.Errors) > 10 {
		res.Errors = append(res.Errors[:10], fmt.Sprintf("… %d more", len(res.Errors)-10))
	}
	return res, nil
}

func firstErrors(e []string) []string {
	return e[:min(len(e), 5)]
}
