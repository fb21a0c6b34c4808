#!/usr/bin/env python3
"""Median of several `rstream perf --json` files: one Markdown table of p50 RTT and bandwidth, with
the ratios the targets are stated in. Usage: perf-median.py run1.json run2.json run3.json"""
import json, statistics, sys

runs = [json.load(open(path)) for path in sys.argv[1:]]
cells = {}
for run in runs:
    for r in run["results"]:
        key = (r["transport"], r["size"])
        cells.setdefault(key, {"p50": [], "p99": [], "bw": [], "mps": []})
        cells[key]["p50"].append(r["rtt_us"]["p50"])
        cells[key]["p99"].append(r["rtt_us"]["p99"])
        cells[key]["bw"].append(r["bandwidth_MBps"])
        cells[key]["mps"].append(r["messages_per_s"])
med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in cells.items()}
transports = ["rstream", "rstream-tuned", "rstream-busypoll", "core-writedata", "tcp-blocking", "tcp-busypoll"]
sizes = sorted({s for _, s in med})
print("| transport | size | p50 RTT µs | p99 RTT µs | MB/s | msg/s |")
print("|---|---:|---:|---:|---:|---:|")
for t in transports:
    for s in sizes:
        if (t, s) in med:
            m = med[(t, s)]
            print(f"| {t} | {s} | {m['p50']:.1f} | {m['p99']:.1f} | {m['bw']:.1f} | {m['mps']:.0f} |")
print()
print("| size | RTT rstream/core | RTT rstream-busypoll/core | RTT rstream/tcp-blocking | BW rstream/core | BW rstream-tuned/core |")
print("|---:|---:|---:|---:|---:|---:|")
for s in sizes:
    r, t, c, k, b = (med.get((x, s)) for x in ["rstream", "rstream-tuned", "core-writedata", "tcp-blocking", "rstream-busypoll"])
    if r and t and c and k and b:
        print(f"| {s} | {r['p50'] / c['p50']:.2f}x | {b['p50'] / c['p50']:.2f}x | {r['p50'] / k['p50']:.2f}x | {r['bw'] / c['bw']:.2f}x | {t['bw'] / c['bw']:.2f}x |")
scales = [run["scale"] for run in runs if "scale" in run]
if scales:
    rt = statistics.median(s["round_trips_per_s"] for s in scales)
    mem = statistics.median(s["resident_bytes_per_connection"] for s in scales)
    ring = scales[0]["ring_bytes_per_connection"]
    print(f"\nscale: {scales[0]['connections']} connections, {rt:.0f} round trips/s (64 B); "
          f"resident {mem / 1024:.1f} KiB per connection, of which rings {ring / 1024:.0f} KiB")
