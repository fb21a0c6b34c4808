#!/usr/bin/env bash
# Figures as medians of ratios taken close together in time: on a VM whose speed drifts by several
# times within a minute, rows measured a minute apart cannot be compared. Each round measures, for
# each size, every transport of the set one right after another (`rstream perf --quick`, the two
# processes on CPUs 0 and 1 unless PIN=0), and keeps that round's ratios to the set's references; the medians
# over ROUNDS rounds are printed.
#   scripts/perf-rounds.sh shm|fabric [path/to/rstream] [ROUNDS] [SIZES]
# shm:    rstream-shm(-tuned, -busypoll) against shm-floor and ucx-stream (issue 10)
# fabric: rstream(-tuned, -zerocopy, -busypoll) against core-writedata (issue 12)
set -euo pipefail
set_name=${1:?usage: perf-rounds.sh shm|fabric [rstream] [ROUNDS] [SIZES]}
rstream=${2:-.build/release/rstream}
rounds=${3:-5}
sizes=${4:-64,4096,65536,1048576}
case "$set_name" in
  shm) transports="rstream-shm rstream-shm-tuned rstream-shm-busypoll shm-floor ucx-stream"; references="ucx-stream shm-floor" ;;
  fabric) transports="rstream rstream-tuned rstream-zerocopy rstream-busypoll core-writedata"; references="core-writedata" ;;
  *) echo "unknown set $set_name (shm or fabric)" >&2; exit 2 ;;
esac
pin="--cpu 0 --server-cpu 1"
[ "${PIN:-1}" = 0 ] && pin=""
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for round in $(seq 1 "$rounds"); do
  for size in ${sizes//,/ }; do
    for t in $transports; do
      "$rstream" perf --quick --transports "$t" --sizes "$size" --connections 0 $pin \
        --json "$dir/$round-$size-$t.json" >/dev/null 2>&1 || true
    done
  done
done
python3 - "$dir" "$rounds" "$sizes" "$transports" "$references" <<'PY'
import json, os, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
sizes = [int(s) for s in sys.argv[3].split(',')]
transports, references = sys.argv[4].split(), sys.argv[5].split()
def row(r, s, t):
    p = os.path.join(d, f"{r}-{s}-{t}.json")
    if not os.path.exists(p): return None
    rs = [x for x in json.load(open(p))['results'] if x['transport'] == t and x['size'] == s]
    return rs[0] if rs else None
print(f"medians over {rounds} rounds (ratios within a round); RTT p50 in µs, bandwidth in MB/s")
header = f"{'size':>8} {'transport':<22} {'RTT':>8} {'MB/s':>8}"
for ref in references: header += f" {'RTT/' + ref:>20} {'BW/' + ref:>19}"
print(header)
for s in sizes:
    for t in transports:
        rtt, bw = [], []
        ratios = {ref: ([], []) for ref in references}
        for r in range(1, rounds + 1):
            x = row(r, s, t)
            if not x: continue
            rtt.append(x['rtt_us']['p50']); bw.append(x.get('bandwidth_MBps', 0))
            for ref in references:
                y = row(r, s, ref)
                if not y: continue
                ratios[ref][0].append(x['rtt_us']['p50'] / y['rtt_us']['p50'])
                if y.get('bandwidth_MBps'): ratios[ref][1].append(x.get('bandwidth_MBps', 0) / y['bandwidth_MBps'])
        if not rtt: continue
        m = lambda v: f"{statistics.median(v):.2f}" if v else "-"
        line = f"{s:>8} {t:<22} {statistics.median(rtt):>8.3f} {statistics.median(bw):>8.0f}"
        for ref in references: line += f" {m(ratios[ref][0]):>20} {m(ratios[ref][1]):>19}"
        print(line)
PY
