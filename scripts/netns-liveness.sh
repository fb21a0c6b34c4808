#!/usr/bin/env bash
# Protocol v4 liveness across a link this script makes and cuts: two network namespaces joined
# by a veth pair (10.231.0.1 <-> 10.231.0.2, addresses that exist only inside them).
#   cut-transfer: the link goes down during a transfer and stays down: both ends fail with a
#                 timeout within the peer timeout + 5 s.
#   cut-idle:     the same on an idle stream.
#   outage:       the link goes down for 2 s (under the peer timeout) during a transfer and comes
#                 back: every byte arrives, byte for byte.
# Usage: netns-liveness.sh RSTREAM_BINARY [SCENARIO...]; exit 0 when every scenario passed,
# 77 when namespaces cannot be made here (the caller reports a skip).
set -uo pipefail
bin=$1; shift
scenarios=${*:-cut-transfer cut-idle outage}
timeout_s=4
ns_a=rs-live-a-$$ ns_b=rs-live-b-$$
veth_a=rsva$$ veth_b=rsvb$$
work=$(mktemp -d)
pids=()

cleanup() {
  for p in "${pids[@]}" $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$ns_a" 2>/dev/null; ip netns del "$ns_b" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

if ! ip netns add "$ns_a" 2>/dev/null; then echo "skip: cannot make network namespaces here"; exit 77; fi
ip netns add "$ns_b" || exit 77
ip link add "$veth_a" type veth peer name "$veth_b" || { echo "skip: cannot make a veth pair"; exit 77; }
ip link set "$veth_a" netns "$ns_a"; ip link set "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add 10.231.0.1/24 dev "$veth_a"; ip -n "$ns_b" addr add 10.231.0.2/24 dev "$veth_b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$veth_a" up; ip -n "$ns_b" link set "$veth_b" up
sleep 1.5 # a new veth pair takes about a second before a connect goes through

link() { ip -n "$ns_a" link set "$veth_a" "$1"; }
common=(--provider tcp --peer-timeout "$timeout_s")
outage_timeout_s=10 # a 2 s outage plus TCP's retransmission back-off stays well under it
port=7700
failures=0

# Starts the listener in A writing to $1; sets $listen_pid.
start_listener() {
  port=$((port + 1))
  ip netns exec "$ns_a" "$bin" listen --host 10.231.0.1 --port "$port" --once "${common[@]}" > "$1" 2> "$work/listen.err" &
  listen_pid=$!; pids+=("$listen_pid")
  for _ in $(seq 50); do grep -q listening "$work/listen.err" 2>/dev/null && return; sleep 0.1; done
}

# Waits for our child $1 to exit within $2 seconds; sets $status to its exit status, or "hung".
# (Not in a subshell: only this shell can reap its children, and a zombie still answers kill -0.)
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ] && kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then status=hung; return; fi
    sleep 0.1
  done
  wait "$pid"; status=$?
}

cut_scenario() { # $1: the producer command for the client's stdin
  start_listener /dev/null
  bash -c "$1" 2>/dev/null | ip netns exec "$ns_b" "$bin" connect 10.231.0.1 "$port" "${common[@]}" > /dev/null 2> "$work/connect.err" &
  local connect_pid=$!; pids+=("$connect_pid")
  sleep 1.5
  link down
  local cut=$SECONDS
  local c l
  wait_exit "$connect_pid" $((timeout_s + 5)); c=$status
  wait_exit "$listen_pid" $((timeout_s + 5 - (SECONDS - cut))); l=$status
  kill -9 $(jobs -p) 2>/dev/null # the producer (sleep, cat) goes with its stream
  link up; sleep 1.5
  echo "  connect: exit $c after $((SECONDS - cut)) s: $(tail -n 1 "$work/connect.err")"
  echo "  listen:  exit $l: $(tail -n 1 "$work/listen.err")"
  if [ "$c" = hung ] || [ "$c" = 0 ] || [ "$l" = hung ] || [ "$l" = 0 ] \
     || ! grep -q timedOut "$work/connect.err" || ! grep -q timedOut "$work/listen.err"; then
    echo "  FAILED: both ends must fail with a timeout within $((timeout_s + 5)) s"; failures=$((failures + 1))
  fi
}

for scenario in $scenarios; do
  echo "== $scenario (peer timeout $timeout_s s)"
  case $scenario in
    cut-transfer) cut_scenario "cat /dev/zero" ;;
    cut-idle) cut_scenario "sleep 60" ;;
    outage)
      common=(--provider tcp --peer-timeout "$outage_timeout_s")
      head -c $((64 << 20)) /dev/urandom > "$work/in"
      start_listener "$work/out"
      # Fed in 1 MiB steps so the transfer is still going when the link drops.
      (for i in $(seq 0 63); do dd if="$work/in" bs=1M skip="$i" count=1 status=none; sleep 0.05; done) \
        | ip netns exec "$ns_b" "$bin" connect 10.231.0.1 "$port" "${common[@]}" > /dev/null 2> "$work/connect.err" &
      connect_pid=$!; pids+=("$connect_pid")
      sleep 1; link down; sleep 2; link up
      wait_exit "$connect_pid" 60; c=$status
      wait_exit "$listen_pid" 10; l=$status
      echo "  connect: exit $c; listen: exit $l; $(stat -c %s "$work/out") of $((64 << 20)) bytes"
      if [ "$c" != 0 ] || [ "$l" != 0 ] || ! cmp -s "$work/in" "$work/out"; then
        echo "  FAILED: every byte must arrive after a 2 s outage"; cat "$work/connect.err" "$work/listen.err"; failures=$((failures + 1))
      fi
      ;;
    *) echo "unknown scenario $scenario"; exit 2 ;;
  esac
done
echo "netns liveness: $failures failed"
[ $failures -eq 0 ]
