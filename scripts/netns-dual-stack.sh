#!/usr/bin/env bash
# An IPv6 wildcard listener takes IPv4 clients over shared memory exactly when its TCP twin
# would, in a network namespace of its own whose net.ipv6.bindv6only this script sets:
#   0: an IPv4 client of a `[::]` listener comes over shm;
#   1: it is refused, as TCP refuses it, while an IPv6 client (`::1`) still comes over shm;
#   1 when the listener is made, 0 when the client connects: the client tries the `[::]` name,
#      and the listener, IPv6-only like its TCP twin, refuses it.
# Usage: netns-dual-stack.sh RSTREAM_BINARY; exit 0 when every case passed, 77 when namespaces
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
listener=
cleanup() {
  [ -n "$listener" ] && kill -9 "$listener" 2>/dev/null
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
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

bindv6only() { ip netns exec "$ns" sysctl -q -w net.ipv6.bindv6only="$1" || { echo "skip: no IPv6 here"; exit 77; }; }

# Starts `rstream listen --host :: --once` on a new port; false if it does not say it listens.
start_listener() {
  port=$((port + 1))
  ip netns exec "$ns" "$bin" listen --host :: --port $port --once >"$work/got-$port" 2>"$work/listen-$port" &
  listener=$!
  watchdog $listener 200
  for _ in $(seq 100); do
    grep -q listening "$work/listen-$port" && return 0
    kill -0 $listener 2>/dev/null || break
    sleep 0.1
  done
  fail "the listener on port $port did not start: $(cat "$work/listen-$port")"
  return 1
}

# Connects to HOST on the current port with "probe", its messages in $work/connect-$port-HOST;
# sets rc.
connect_client() {
  echo "dual-stack probe" | ip netns exec "$ns" "$bin" connect "$1" $port >/dev/null 2>"$work/connect-$port-$1" &
  local client=$!
  watchdog $client 100
  wait $client
  rc=$?
}
said() { cat "$work/connect-$port-$1"; }

stop_listener() { kill -9 "$listener" 2>/dev/null; wait "$listener" 2>/dev/null; listener=; }

# Connects from HOST, which the listener (serving one connection) must take over shm: says ok
# with WHAT, or fails.
expect_served_over_shm() {
  connect_client "$1"
  wait $listener; listener=
  if [ $rc = 0 ] && grep -q 'over shm' "$work/connect-$port-$1" && grep -q 'dual-stack probe' "$work/got-$port"; then
    echo "$2 came over shm: ok"
  else
    fail "$2 (rc $rc): $(said "$1")"
  fi
}

bindv6only 0
if start_listener; then
  expect_served_over_shm 127.0.0.1 "bindv6only=0: an IPv4 client of [::]"
fi

bindv6only 1
if start_listener; then
  connect_client 127.0.0.1
  if [ $rc != 0 ] && grep -q 'connectionRefused' "$work/connect-$port-127.0.0.1"; then
    echo "bindv6only=1: an IPv4 client of [::] was refused, as over TCP: ok"
  else
    fail "bindv6only=1: the IPv4 client (rc $rc, expected a refusal): $(said 127.0.0.1)"
  fi
  expect_served_over_shm ::1 "bindv6only=1: an IPv6 client of [::]"
fi

bindv6only 1
if start_listener; then
  bindv6only 0
  connect_client 127.0.0.1
  stop_listener
  if [ $rc != 0 ] && ! grep -q 'over shm' "$work/connect-$port-127.0.0.1" && grep -q 'does not serve' "$work/connect-$port-127.0.0.1"; then
    echo "an IPv6-only listener refused an IPv4 client that tried its name: ok"
  else
    fail "an IPv6-only listener and an IPv4 client (rc $rc, expected a refusal by the listener): $(said 127.0.0.1)"
  fi
fi

echo "netns dual-stack: $failures failed"
[ $failures = 0 ]
