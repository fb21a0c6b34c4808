#!/usr/bin/env bash
# An IPv6 wildcard listener takes IPv4 clients over shared memory exactly when its TCP twin
# would: in a network namespace of its own with net.ipv6.bindv6only = 0 (dual-stack) an IPv4
# connect to a `[::]` listener goes over shm; with 1 it is refused, as TCP refuses it.
# Usage: netns-dual-stack.sh RSTREAM_BINARY; exit 0 when both cases passed, 77 when namespaces
# cannot be made here (the caller reports a skip).
set -uo pipefail
# Signals: a test runner may start this with most signals blocked, which its children inherit
# (so `timeout` and a plain `kill` do nothing): every stop here is a SIGKILL from a watchdog.
bin=$1
# Kills process $1 after $2 tenths of a second, and ends as soon as it is gone (a sleeping
# watchdog would hold the caller's output pipe open until it woke).
watchdog() {
  ( for _ in $(seq "$2"); do kill -0 "$1" 2>/dev/null || exit 0; sleep 0.1; done; kill -9 "$1" ) >/dev/null 2>&1 &
}
ns=rs-dual-$$
work=$(mktemp -d)
cleanup() {
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add "$ns" 2>/dev/null; then echo "skip: cannot make network namespaces here"; exit 77; fi
ip -n "$ns" link set lo up
failures=0
port=7800
for v6only in 0 1; do
  port=$((port + 1))
  ip netns exec "$ns" sysctl -q -w net.ipv6.bindv6only=$v6only || { echo "skip: no IPv6 here"; exit 77; }
  ip netns exec "$ns" "$bin" listen --host :: --port $port --once >"$work/got-$v6only" 2>"$work/listen-$v6only" &
  listener=$!
  watchdog $listener 200
  for _ in $(seq 50); do grep -q listening "$work/listen-$v6only" && break; sleep 0.1; done
  echo "dual-stack probe" | ip netns exec "$ns" "$bin" connect 127.0.0.1 $port >/dev/null 2>"$work/connect-$v6only" &
  client=$!
  watchdog $client 100
  wait $client
  rc=$?
  if [ $v6only = 0 ]; then
    wait $listener
    if [ $rc = 0 ] && grep -q 'over shm' "$work/connect-$v6only" && grep -q 'dual-stack probe' "$work/got-$v6only"; then
      echo "bindv6only=0: an IPv4 client of [::] came over shm: ok"
    else
      echo "bindv6only=0: FAILED (rc $rc): $(cat "$work/connect-$v6only")"; failures=$((failures + 1))
    fi
  else
    kill -9 "$listener" 2>/dev/null; wait $listener 2>/dev/null
    if [ $rc != 0 ] && grep -q 'connectionRefused' "$work/connect-$v6only"; then
      echo "bindv6only=1: an IPv4 client of [::] was refused, as over TCP: ok"
    else
      echo "bindv6only=1: FAILED (rc $rc, expected a refusal): $(cat "$work/connect-$v6only")"; failures=$((failures + 1))
    fi
  fi
done
echo "netns dual-stack: $failures failed"
[ $failures = 0 ]
