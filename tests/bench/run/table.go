package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// A row of the table: one value of one figure for every peer.
type row struct {
	fig, key, label string
	format          func(float64) string
	noRatio         bool
	// target is issue 8 §3's, checked against the sidecar columns; empty when the row has none.
	target string
	met    func(s map[string]map[string]float64, store string) (ok, applies bool)
}

func si(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func ms(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2f s", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.2f ms", v)
	}
}

func pctf(v float64) string {
	if v >= 0.9995 && v < 1.0005 {
		return "100%"
	}
	return fmt.Sprintf("%.1f%%", v*100)
}

func kib(v float64) string  { return fmt.Sprintf("%.1f KiB", v) }
func mib(v float64) string  { return fmt.Sprintf("%.1f MiB", v/1024) }
func secs(v float64) string { return fmt.Sprintf("%.2f", v) }

const memStore, redisStore = "sidecar-memory", "sidecar-redis"

func ratioTo(s map[string]map[string]float64, store, key, ref string) (float64, bool) {
	v, ok1 := s[store][key]
	h, ok2 := s[ref][key]
	if !ok1 || !ok2 || h == 0 {
		return 0, false
	}
	return v / h, true
}

func allRecorded(s map[string]map[string]float64, store string) bool {
	v := s[store]
	return v != nil && v["unrecorded"] == 0 && v["recorded_ratio"] >= 0.999
}

func tableRows(figs []figure) []row {
	has := func(id string) bool {
		return slices.ContainsFunc(figs, func(f figure) bool { return f.ID == id })
	}
	atLeastH := func(key string, x float64, stores ...string) func(map[string]map[string]float64, string) (bool, bool) {
		return func(s map[string]map[string]float64, store string) (bool, bool) {
			if !slices.Contains(stores, store) {
				return false, false
			}
			r, ok := ratioTo(s, store, key, "haproxy")
			return ok && r >= x, ok
		}
	}
	var rows []row
	tpNames := map[string]string{"tp/1x100B": "1 stream × 100 B", "tp/8x100B": "8 streams × 100 B", "tp/1x1KiB": "1 stream × 1 KiB", "tp/8x1KiB": "8 streams × 1 KiB"}
	for _, id := range []string{"tp/1x100B", "tp/8x100B", "tp/1x1KiB", "tp/8x1KiB"} {
		if !has(id) {
			continue
		}
		r := row{fig: id, key: "events_per_s", label: "throughput, " + tpNames[id] + ", events/s", format: si}
		switch id {
		case "tp/1x100B", "tp/8x100B":
			mem := atLeastH("events_per_s", 0.5, memStore)
			red := atLeastH("events_per_s", 0.3, redisStore)
			r.target = "Redis ≥ 0.3× H with 100% recorded"
			if id == "tp/1x100B" {
				r.target = "memory ≥ 0.5× H; " + r.target
			}
			r.met = func(s map[string]map[string]float64, store string) (bool, bool) {
				if store == memStore {
					if id != "tp/1x100B" {
						return false, false
					}
					return mem(s, store)
				}
				ok, applies := red(s, store)
				return ok && allRecorded(s, store), applies
			}
		default:
			r.target = "memory ≥ 0.8× H"
			r.met = atLeastH("events_per_s", 0.8, memStore)
		}
		rows = append(rows, r)
	}
	for _, id := range []string{"tp/1x100B", "tp/8x100B", "tp/1x1KiB", "tp/8x1KiB"} {
		if has(id) {
			rows = append(rows, row{fig: id, key: "cpu_s_per_m", label: "proxy CPU s per million events, " + tpNames[id], format: secs})
		}
	}
	for _, id := range []string{"tp/1x100B", "tp/8x100B", "tp/1x1KiB", "tp/8x1KiB"} {
		if has(id) {
			rows = append(rows, row{fig: id, key: "recorded_ratio", label: "sidecar recorded / forwarded, " + tpNames[id], format: pctf, noRatio: true})
		}
	}
	for _, f := range figs {
		if !strings.HasPrefix(f.ID, "fan/") {
			continue
		}
		n, rate := argOf(f, "-streams"), argOf(f, "-rate")
		name := fmt.Sprintf("fan-out %s streams × %s ev/s", n, rate)
		p99 := row{fig: f.ID, key: "p99_ms", label: name + ", latency p99", format: ms}
		del := row{fig: f.ID, key: "delivered", label: name + ", delivered", format: pctf}
		rec := row{fig: f.ID, key: "recorded_ratio", label: name + ", sidecar recorded / forwarded", format: pctf, noRatio: true}
		both := []string{memStore, redisStore}
		switch rate {
		case "1", "3":
			p99.target = "≤ 1.5× H, both stores"
			p99.met = func(s map[string]map[string]float64, store string) (bool, bool) {
				r, ok := ratioTo(s, store, "p99_ms", "haproxy")
				return ok && r <= 1.5, ok && slices.Contains(both, store)
			}
		case "10":
			p99.target = "≤ 3× H, both stores"
			p99.met = func(s map[string]map[string]float64, store string) (bool, bool) {
				r, ok := ratioTo(s, store, "p99_ms", "haproxy")
				return ok && r <= 3, ok && slices.Contains(both, store)
			}
			del.target = "100%, both stores"
			del.met = func(s map[string]map[string]float64, store string) (bool, bool) {
				v, ok := s[store]["delivered"]
				return ok && v >= 0.9995, ok && slices.Contains(both, store)
			}
			rec.target = "100% recorded"
			rec.met = func(s map[string]map[string]float64, store string) (bool, bool) {
				_, ok := s[store]["recorded_ratio"]
				return allRecorded(s, store), ok
			}
		}
		rows = append(rows,
			row{fig: f.ID, key: "p50_ms", label: name + ", latency p50", format: ms},
			p99,
			row{fig: f.ID, key: "max_ms", label: name + ", latency max", format: ms},
			del, rec)
	}
	if f, ok := findFig(figs, "idle"); ok {
		st := strings.Split(argOf(f, "-steps"), ",")
		for _, n := range st {
			rows = append(rows, row{fig: "idle", key: "rss_kib_" + n, label: "RSS with " + n + " idle streams", format: mib})
		}
		rows = append(rows, row{fig: "idle", key: "kib_per_stream", label: fmt.Sprintf("RSS per idle stream (%s → %s streams)", st[0], st[len(st)-1]), format: kib,
			target: "≤ 8 KiB",
			met: func(s map[string]map[string]float64, store string) (bool, bool) {
				v, ok := s[store]["kib_per_stream"]
				return ok && v <= 8, ok && (store == memStore || store == redisStore)
			}})
	}
	if has("connrate") {
		rows = append(rows, row{fig: "connrate", key: "per_s", label: "new streams per second (16 workers)", format: si,
			target: "≥ 1.0× H", met: atLeastH("per_s", 1.0, memStore, redisStore)})
	}
	return rows
}

func findFig(figs []figure, id string) (figure, bool) {
	for _, f := range figs {
		if f.ID == id {
			return f, true
		}
	}
	return figure{}, false
}

func argOf(f figure, name string) string {
	for i := 0; i+1 < len(f.Args); i++ {
		if f.Args[i] == name {
			return f.Args[i+1]
		}
	}
	return ""
}

func ratio(v, ref float64) string {
	if ref == 0 {
		return ""
	}
	r := v / ref
	switch {
	case r >= 10:
		return fmt.Sprintf("%.0f×", r)
	case r >= 0.1:
		return fmt.Sprintf("%.2f×", r)
	default:
		return fmt.Sprintf("%.3f×", r)
	}
}

func table(res Results, figs []figure) string {
	var b strings.Builder
	meta := res.Meta
	mach, _ := meta["machine"].(map[string]any)
	vers, _ := meta["versions"].(map[string]string)
	fmt.Fprintf(&b, "## ssekeeper bench, %s\n\n", meta["date"])
	fmt.Fprintf(&b, "- command: `%s` (mode %s, %v repetition(s), peer order rotated, medians shown); %.0f s\n", meta["command"], meta["mode"], meta["reps"], meta["seconds"])
	fmt.Fprintf(&b, "- machine: %v, %v cores, %v, Linux %v; load average (1 min) %.2f at start, %.2f at end\n",
		mach["cpu"], mach["cores"], mach["memory"], mach["kernel"], meta["load1_at_start"], meta["load1_at_end"])
	fmt.Fprintf(&b, "- peers: %s; %s; sidecar %s (release); %s; app and load generator in Go, all on loopback in a network namespace of their own\n",
		vers["haproxy"], vers["nginx"], vers["sidecar"], vers["redis"])
	b.WriteString("- sidecar recorded / forwarded: `events_recorded` (less the one End entry per ended stream) over `events_forwarded` from its /metrics on the admin port, read once recorded + unrecorded reach forwarded or 4 s after the load ended (`unrecorded` = `events_unrecorded`)\n")
	b.WriteString("- idle streams stop at 9,900: the machine's fd limit is 20,000 per process and a proxy holds two per stream\n")
	b.WriteString("- each cell: median value, then its ratio to direct (d) and to HAProxy (H) in the same run; load = the machine's 1-min load average while the row was measured\n\n")
	b.WriteString("| figure |")
	for _, p := range peers {
		b.WriteString(" " + peerLabel[p] + " |")
	}
	b.WriteString(" load | target | met |\n")
	b.WriteString("|---|" + strings.Repeat("---|", len(peers)+3) + "\n")
	loads := map[string][2]float64{}
	for _, m := range res.Measurements {
		l, ok := loads[m.Figure]
		if !ok {
			l = [2]float64{m.Load1, m.Load1}
		}
		loads[m.Figure] = [2]float64{min(l[0], m.Load1), max(l[1], m.Load1)}
	}
	for _, r := range tableRows(figs) {
		s := res.Summary[r.fig]
		cells := []string{r.label}
		for _, p := range peers {
			v, ok := s[p][r.key]
			if !ok {
				cells = append(cells, "—")
				continue
			}
			c := r.format(v)
			if !r.noRatio {
				var rs []string
				if d, ok := s["direct"][r.key]; ok && p != "direct" && d != 0 {
					rs = append(rs, "d "+ratio(v, d))
				}
				if h, ok := s["haproxy"][r.key]; ok && p != "haproxy" && p != "direct" && h != 0 {
					rs = append(rs, "H "+ratio(v, h))
				}
				if len(rs) > 0 {
					c += " (" + strings.Join(rs, ", ") + ")"
				}
			}
			if r.fig == "idle" && p == redisStore {
				if ex, ok := s[p]["redis_"+r.key]; ok {
					if r.key == "kib_per_stream" {
						c += fmt.Sprintf(" +%s in redis-server", kib(ex))
					}
				}
			}
			if r.key == "recorded_ratio" {
				if u := s[p]["unrecorded"]; u > 0 {
					c += fmt.Sprintf(" (%s unrecorded)", si(u))
				}
			}
			cells = append(cells, c)
		}
		l := loads[r.fig]
		cells = append(cells, fmt.Sprintf("%.1f–%.1f", l[0], l[1]))
		cells = append(cells, r.target)
		var met []string
		if r.met != nil {
			for _, store := range []string{memStore, redisStore} {
				ok, applies := r.met(s, store)
				if !applies {
					continue
				}
				word := "not met"
				if ok {
					word = "met"
				}
				met = append(met, map[string]string{memStore: "memory", redisStore: "Redis"}[store]+": "+word)
			}
		}
		cells = append(cells, strings.Join(met, "; "))
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	if f, ok := findFig(figs, "bcast"); ok && f.Bcast != nil {
		b.WriteString(bcastTable(res, f))
	}
	if len(res.Failures) > 0 {
		b.WriteString("\nFailed measurements (not in the medians):\n\n")
		for _, f := range res.Failures {
			b.WriteString("- " + f + "\n")
		}
	}
	return b.String()
}
