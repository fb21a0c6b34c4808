#!/usr/bin/env bash
# No system call per operation over shared memory while busy-polling: `strace -c` over a million
# 64-byte round trips (and a million one-way messages of the bandwidth phase) through
# `rstream perf`, both processes (-f). Prints strace's table; the calls counted there are set-up
# and teardown, not per operation.
#   scripts/shm-syscalls.sh [path/to/rstream] [round trips]
set -euo pipefail
rstream=${1:-.build/release/rstream}
trips=${2:-1000000}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
strace -f -c -o "$out" "$rstream" perf --transports rstream-shm-busypoll --sizes 64 --round-trips "$trips" \
  --connections 0 --cpu 0 --server-cpu 1 >/dev/null 2>&1
cat "$out"
total=$(awk '/total/ {print $4}' "$out")
echo "system calls in all: $total for $trips round trips and 1000000 one-way messages"
