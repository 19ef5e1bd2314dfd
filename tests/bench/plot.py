#!/usr/bin/env python3
"""The bench's plot: target/bench/results.json -> bench.png (four panels, one colour per peer)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PEERS = ["direct", "haproxy", "nginx", "sidecar-memory", "sidecar-redis"]
LABEL = {"direct": "direct", "haproxy": "HAProxy", "nginx": "nginx",
         "sidecar-memory": "sidecar (memory)", "sidecar-redis": "sidecar (Redis)"}
COLOR = {"direct": "#777777", "haproxy": "#1f77b4", "nginx": "#2ca02c",
         "sidecar-memory": "#d62728", "sidecar-redis": "#ff7f0e"}


def main(src, dst):
    res = json.load(open(src))
    s, meta = res["summary"], res["meta"]
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))

    # 1. throughput per peer, grouped by load shape
    tps = [f for f in ["tp/1x100B", "tp/8x100B", "tp/1x1KiB", "tp/8x1KiB"] if f in s]
    a = ax[0][0]
    w = 0.8 / len(PEERS)
    for i, p in enumerate(PEERS):
        ys = [s[f].get(p, {}).get("events_per_s", 0) for f in tps]
        a.bar([x + i * w for x in range(len(tps))], ys, w, label=LABEL[p], color=COLOR[p])
    a.set_xticks([x + 0.4 - w / 2 for x in range(len(tps))])
    a.set_xticklabels([f[3:].replace("x", " × ") for f in tps])
    a.set_yscale("log")
    a.set_ylabel("events/s (log)")
    a.set_title("throughput (firehose)")
    a.legend(fontsize=8)

    # 2. fan-out latency p99 (solid) and p50 (dotted) vs events/s per stream
    fans = sorted([f for f in s if f.startswith("fan/")], key=lambda f: float(f[4:]))
    a = ax[0][1]
    for p in PEERS:
        xs = [float(f[4:]) for f in fans if p in s[f]]
        if not xs:
            continue
        a.plot(xs, [s[f][p]["p99_ms"] for f in fans if p in s[f]], "o-", color=COLOR[p], label=LABEL[p] + " p99")
        a.plot(xs, [s[f][p]["p50_ms"] for f in fans if p in s[f]], "o:", color=COLOR[p], alpha=0.6)
    streams = next((int(s[f][p]["opened"]) for f in fans for p in s[f]), 0)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xticks([float(f[4:]) for f in fans])
    a.set_xticklabels([f[4:] for f in fans])
    a.set_xlabel("events/s per stream")
    a.set_ylabel("latency app -> client, ms (log); dotted: p50")
    a.set_title(f"fan-out latency, {streams} streams")
    a.legend(fontsize=8, loc="upper left")
    if fans:
        top = fans[-1]
        a.text(0.98, 0.02, f"delivered at {top[4:]} ev/s:\n" + "\n".join(
            f"{LABEL[p]} {s[top][p]['delivered'] * 100:.1f}%" for p in PEERS if p in s[top]),
            transform=a.transAxes, ha="right", va="bottom", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="#cccccc"))

    # 3. RSS vs idle streams
    a = ax[1][0]
    idle = s.get("idle", {})
    for p in PEERS:
        v = idle.get(p)
        if not v:
            continue
        pts = sorted((int(k[8:]), v[k] / 1024) for k in v if k.startswith("rss_kib_"))
        a.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=COLOR[p],
               label=f"{LABEL[p]} ({v.get('kib_per_stream', 0):.1f} KiB/stream)")
    a.set_xlabel("idle streams open")
    a.set_ylabel("proxy RSS, MiB")
    a.set_title("memory per idle stream")
    a.legend(fontsize=8)

    # 4. new streams per second, and fraction delivered at the highest fan-out rate
    a = ax[1][1]
    cr = s.get("connrate", {})
    ps = [p for p in PEERS if p in cr]
    a.bar(range(len(ps)), [cr[p]["per_s"] for p in ps], color=[COLOR[p] for p in ps])
    a.set_xticks(range(len(ps)))
    a.set_xticklabels([LABEL[p] for p in ps], fontsize=8)
    a.set_ylabel("new streams/s (16 workers)")
    for x, p in enumerate(ps):
        a.text(x, cr[p]["per_s"], f"{cr[p]['per_s']:,.0f}", ha="center", va="bottom", fontsize=8)
    a.set_title("new streams per second (connect, first event, close)")

    m = meta["machine"]
    fig.suptitle(f"ssekeeper bench {meta['date']} — `{meta['command']}` ({meta['mode']}, {meta['reps']} rep.) — "
                 f"{m['cpu']}, {m['cores']} cores; load {meta['load1_at_start']:.1f} → {meta['load1_at_end']:.1f}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
