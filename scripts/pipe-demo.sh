#!/usr/bin/env bash
# Pipes MIB mebibytes of random bytes through `rstream listen` and `rstream connect` on loopback,
# checks they arrive byte-identical, and prints bytes moved and throughput.
set -euo pipefail
rstream=${1:?path to the rstream binary}
mib=${2:-256}
work=$(mktemp -d)
trap 'kill "${listener:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

head -c "$((mib << 20))" /dev/urandom > "$work/in"
"$rstream" listen --host 127.0.0.1 --port 0 --once > "$work/out" 2> "$work/listen.err" &
listener=$!
for _ in $(seq 100); do grep -q "listening on" "$work/listen.err" 2>/dev/null && break; sleep 0.05; done
port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$work/listen.err")
[ -n "$port" ] || { cat "$work/listen.err"; exit 1; }

start=$(date +%s.%N)
"$rstream" connect 127.0.0.1 "$port" < "$work/in"
wait "$listener"
end=$(date +%s.%N)

cmp -s "$work/in" "$work/out" || { echo "FAILED: the bytes that arrived differ from the bytes sent"; exit 1; }
bytes=$(stat -c %s "$work/out")
awk -v b="$bytes" -v s="$start" -v e="$end" 'BEGIN {
  t = e - s; printf "moved %d bytes (%.0f MiB) byte-identical in %.3f s: %.1f MB/s (10^6 bytes/s), including process start-up\n", b, b / 1048576, t, b / t / 1e6 }'
