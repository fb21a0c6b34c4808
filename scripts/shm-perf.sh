#!/usr/bin/env bash
# The same-host figures of issue 10 as medians of ratios taken close together in time: on a VM
# whose speed drifts by several times within a minute, rows measured a minute apart cannot be
# compared. Each round measures, for each size, rstream-shm(-tuned, -busypoll), shm-floor and
# ucx-stream one right after another (`rstream perf --quick`, processes on CPUs 0 and 1), and the
# ratios of that round are kept; the medians over ROUNDS rounds are printed.
#   scripts/shm-perf.sh [path/to/rstream] [ROUNDS] [SIZES]
set -euo pipefail
rstream=${1:-.build/release/rstream}
rounds=${2:-5}
sizes=${3:-64,4096,65536,1048576}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for round in $(seq 1 "$rounds"); do
  for size in ${sizes//,/ }; do
    for t in rstream-shm rstream-shm-tuned rstream-shm-busypoll shm-floor ucx-stream; do
      "$rstream" perf --quick --transports "$t" --sizes "$size" --connections 0 --cpu 0 --server-cpu 1 \
        --json "$dir/$round-$size-$t.json" >/dev/null 2>&1 || true
    done
  done
done
python3 - "$dir" "$rounds" "$sizes" <<'PY'
import json, os, statistics, sys
d, rounds, sizes = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(',')]
def row(r, s, t):
    p = os.path.join(d, f"{r}-{s}-{t}.json")
    if not os.path.exists(p): return None
    rs = [x for x in json.load(open(p))['results'] if x['transport'] == t and x['size'] == s]
    return rs[0] if rs else None
print(f"medians over {rounds} rounds (ratios within a round); RTT p50 in µs, bandwidth in MB/s")
print(f"{'size':>8} {'transport':<22} {'RTT':>8} {'MB/s':>8} {'RTT/ucx':>8} {'RTT/floor':>9} {'BW/ucx':>7}")
for s in sizes:
    for t in ['rstream-shm', 'rstream-shm-tuned', 'rstream-shm-busypoll', 'shm-floor', 'ucx-stream']:
        rtt, bw, ru, rf, bu = [], [], [], [], []
        for r in range(1, rounds + 1):
            x, u, f = row(r, s, t), row(r, s, 'ucx-stream'), row(r, s, 'shm-floor')
            if not x: continue
            rtt.append(x['rtt_us']['p50']); bw.append(x.get('bandwidth_MBps', 0))
            if u: ru.append(x['rtt_us']['p50'] / u['rtt_us']['p50']); bu.append(x.get('bandwidth_MBps', 0) / u['bandwidth_MBps'])
            if f: rf.append(x['rtt_us']['p50'] / f['rtt_us']['p50'])
        m = lambda v: f"{statistics.median(v):.2f}" if v else "-"
        if rtt: print(f"{s:>8} {t:<22} {statistics.median(rtt):>8.3f} {statistics.median(bw):>8.0f} {m(ru):>8} {m(rf):>9} {m(bu):>7}")
PY
