// Broadcast: the two ways of giving many clients on several replicas the same events.
//
//	GET /bcast   the one upstream ssekeeper's broadcast holder opens: -bcast-rate events/s of
//	             -bcast-size bytes, an app-wide sequence (event n is due at start + n/R), so a
//	             reopened upstream with `Last-Event-ID` continues it
//	GET /sub     the seed pattern without ssekeeper: this replica's clients, each fed from the
//	             replica's one Redis SUBSCRIBE (-redis); a client that cannot keep up is dropped
//	-publish-rate R  this replica PUBLISHes the events (R/s, -bcast-size bytes) to that channel
//	GET /stats   {"bcast_opened":…, "sub_opened":…, "sub_clients":…, "sub_dropped":…, "published":…}
package main

import (
	"context"
	"encoding/json"
	"log"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

const channel = "bench:bcast"

var (
	bcastOpened atomic.Int64
	subClients  atomic.Int64
	subOpened   atomic.Int64
	subDropped  atomic.Int64
	published   atomic.Int64
	epoch       = time.Now()
)

func stats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]int64{
		"bcast_opened": bcastOpened.Load(), "sub_clients": subClients.Load(),
		"sub_dropped": subDropped.Load(), "published": published.Load(), "sub_opened": subOpened.Load(),
	})
}

// event writes event n, stamped now, into buf (len = size).
func event(buf []byte, n uint64) {
	template(buf)
	c := newCounter(n)
	copy(buf[idOff:idOff+idDigits], c[:])
	putTS(buf[tsOff:tsOff+tsDigits], time.Now())
}

// bcast is the broadcast upstream: one per SseService, whoever asks.
func bcast(rate float64, size int) http.HandlerFunc {
	period := time.Duration(float64(time.Second) / rate)
	return func(w http.ResponseWriter, r *http.Request) {
		bcastOpened.Add(1)
		n := uint64(time.Since(epoch)/period) + 1
		if v := firstID(r); v > 1 {
			n = v
		}
		buf := make([]byte, size)
		rc := streamHead(w)
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			t.Reset(time.Until(epoch.Add(time.Duration(n) * period)))
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
			event(buf, n)
			n++
			if _, err := w.Write(buf); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

// hub fans one subscription out to this replica's clients, as an app written for it does.
type hub struct {
	mu      sync.Mutex
	clients map[chan []byte]struct{}
}

func (h *hub) add() chan []byte {
	c := make(chan []byte, 256)
	h.mu.Lock()
	h.clients[c] = struct{}{}
	h.mu.Unlock()
	subClients.Add(1)
	subOpened.Add(1)
	return c
}

func (h *hub) remove(c chan []byte) {
	h.mu.Lock()
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		close(c)
		subClients.Add(-1)
	}
	h.mu.Unlock()
}

func (h *hub) send(msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		select {
		case c <- msg:
		default: // too slow: dropped, it reconnects
			delete(h.clients, c)
			close(c)
			subClients.Add(-1)
			subDropped.Add(1)
		}
	}
}

func subscribe(addr string) http.HandlerFunc {
	h := &hub{clients: map[chan []byte]struct{}{}}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	ps := rdb.Subscribe(context.Background(), channel)
	if _, err := ps.Receive(context.Background()); err != nil {
		log.Fatalf("subscribe %s: %v", addr, err)
	}
	go func() {
		for m := range ps.Channel(redis.WithChannelSize(4096)) {
			h.send([]byte(m.Payload))
		}
	}()
	return func(w http.ResponseWriter, r *http.Request) {
		c := h.add()
		defer h.remove(c)
		rc := streamHead(w)
		for {
			select {
			case <-r.Context().Done():
				return
			case msg, ok := <-c:
				if !ok {
					return
				}
				if _, err := w.Write(msg); err != nil || rc.Flush() != nil {
					return
				}
			}
		}
	}
}

func publish(addr string, rate float64, size int) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	period := time.Duration(float64(time.Second) / rate)
	for n := uint64(1); ; n++ {
		time.Sleep(time.Until(epoch.Add(time.Duration(n) * period)))
		buf := make([]byte, size)
		event(buf, n)
		if err := rdb.Publish(context.Background(), channel, buf).Err(); err != nil {
			log.Printf("publish: %v", err)
			continue
		}
		published.Add(1)
	}
}
