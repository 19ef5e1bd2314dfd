// The bench's SSE app: faster than any proxy in front of it, so a figure measures the proxy.
//
//	GET /firehose?size=S&dur=D&n=N  events of S bytes (on the wire) as fast as the reader takes
//	                                them, for D seconds or N events, whichever ends first
//	GET /paced?rate=R&count=C&size=S  C events at R events/s (random phase), then the end
//	GET /paced?rate=0&hold=H        one event, then an idle stream held H seconds
//	GET /healthz                    200
//	GET /bcast, /sub, /stats         broadcast (broadcast.go)
//
// Every event has `id: <n>` (zero-padded) and `data: <unix ns at send> <padding>`; a
// `Last-Event-ID: <n>` continues after n. Every stream is bounded in time (at most 120 s), but
// /bcast and /sub, which end with their client (the driver stops every process it started).
package main

import (
	"flag"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"
)

const (
	idDigits = 12
	tsDigits = 19
	// "id: " id "\ndata: " ts " " pad "\n\n"
	fixedBytes = 4 + idDigits + 7 + tsDigits + 1 + 2
	minSize    = fixedBytes + 1
	maxSize    = 1 << 20
	maxSeconds = 120
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "address to listen on")
	bcastRate := flag.Float64("bcast-rate", 5, "events/s of /bcast and of -publish-rate's default")
	bcastSize := flag.Int("bcast-size", 100, "bytes per broadcast event on the wire")
	redisAddr := flag.String("redis", "", "host:port of Redis: serve /sub from its channel")
	pubRate := flag.Float64("publish-rate", 0, "events/s this replica PUBLISHes to the channel (needs -redis)")
	flag.Parse()
	size := min(max(*bcastSize, minSize), maxSize)
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", stats)
	mux.HandleFunc("/bcast", bcast(min(max(*bcastRate, 0.1), 10000), size))
	if *redisAddr != "" {
		mux.HandleFunc("/sub", subscribe(*redisAddr))
		if *pubRate > 0 {
			go publish(*redisAddr, min(*pubRate, 10000), size)
		}
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/firehose", firehose)
	mux.HandleFunc("/paced", paced)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("bench app on %s", ln.Addr())
	log.Fatal(srv.Serve(ln))
}

func intQ(r *http.Request, k string, def, lo, hi int64) int64 {
	v, err := strconv.ParseInt(r.URL.Query().Get(k), 10, 64)
	if err != nil {
		v = def
	}
	return min(max(v, lo), hi)
}

func floatQ(r *http.Request, k string, def, lo, hi float64) float64 {
	v, err := strconv.ParseFloat(r.URL.Query().Get(k), 64)
	if err != nil {
		v = def
	}
	return min(max(v, lo), hi)
}

func firstID(r *http.Request) uint64 {
	if v, err := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64); err == nil {
		return v + 1
	}
	return 1
}

func streamHead(w http.ResponseWriter) *http.ResponseController {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	return rc
}

// template fills b (len = size) with one event whose id and ts slots are zeros.
func template(b []byte) {
	n := copy(b, "id: ")
	for i := 0; i < idDigits; i++ {
		b[n+i] = '0'
	}
	n += idDigits
	n += copy(b[n:], "\ndata: ")
	for i := 0; i < tsDigits; i++ {
		b[n+i] = '0'
	}
	n += tsDigits
	b[n] = ' '
	n++
	for ; n < len(b)-2; n++ {
		b[n] = 'x'
	}
	b[len(b)-2], b[len(b)-1] = '\n', '\n'
}

const idOff, tsOff = 4, 4 + idDigits + 7

// counter is a fixed-width decimal incremented in place.
type counter [idDigits]byte

func newCounter(v uint64) (c counter) {
	for i := idDigits - 1; i >= 0; i-- {
		c[i] = byte('0' + v%10)
		v /= 10
	}
	return c
}

func (c *counter) inc() {
	for i := idDigits - 1; i >= 0; i-- {
		if c[i] < '9' {
			c[i]++
			return
		}
		c[i] = '0'
	}
}

func putTS(b []byte, t time.Time) {
	v := uint64(t.UnixNano())
	for i := tsDigits - 1; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
}

func firehose(w http.ResponseWriter, r *http.Request) {
	size := int(intQ(r, "size", 100, minSize, maxSize))
	n := intQ(r, "n", 0, 0, 1<<40)
	dur := time.Duration(floatQ(r, "dur", 2, 0.01, maxSeconds) * float64(time.Second))
	rc := streamHead(w)
	per := max(1, (64<<10)/size)
	buf := make([]byte, per*size)
	for i := 0; i < per; i++ {
		template(buf[i*size : (i+1)*size])
	}
	id := newCounter(firstID(r))
	end := time.Now().Add(dur)
	var sent int64
	var ts [tsDigits]byte
	for {
		now := time.Now()
		if !now.Before(end) || (n > 0 && sent >= n) {
			return
		}
		k := int64(per)
		if n > 0 {
			k = min(k, n-sent)
		}
		putTS(ts[:], now)
		for i := 0; i < int(k); i++ {
			ev := buf[i*size:]
			copy(ev[idOff:idOff+idDigits], id[:])
			copy(ev[tsOff:tsOff+tsDigits], ts[:])
			id.inc()
		}
		if _, err := w.Write(buf[:int(k)*size]); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
		sent += k
	}
}

func paced(w http.ResponseWriter, r *http.Request) {
	rate := floatQ(r, "rate", 1, 0, 1000)
	size := int(intQ(r, "size", 100, minSize, maxSize))
	buf := make([]byte, size)
	template(buf)
	id := newCounter(firstID(r))
	rc := streamHead(w)
	send := func() bool {
		copy(buf[idOff:idOff+idDigits], id[:])
		putTS(buf[tsOff:tsOff+tsDigits], time.Now())
		id.inc()
		if _, err := w.Write(buf); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	ctx := r.Context()
	if rate == 0 {
		hold := time.Duration(floatQ(r, "hold", 30, 0, maxSeconds) * float64(time.Second))
		if !send() {
			return
		}
		t := time.NewTimer(hold)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return
	}
	period := time.Duration(float64(time.Second) / rate)
	count := intQ(r, "count", 10, 1, int64(rate*maxSeconds)+1)
	start := time.Now().Add(time.Duration(rand.Int64N(int64(period))))
	t := time.NewTimer(time.Until(start))
	defer t.Stop()
	for i := int64(0); i < count; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !send() {
			return
		}
		t.Reset(time.Until(start.Add(time.Duration(i+1) * period)))
	}
}
