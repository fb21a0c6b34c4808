#!/usr/bin/env bash
# Soak (make soak; not in CI): for MINUTES, streams of random sizes, ring sizes and modes on
# loopback, one way (listen → file) or both ways (listen --echo), and in a third of the runs one
# side killed with kill -9 at a random moment. Checked: an undisturbed run delivers every byte,
# byte for byte; after a kill the survivor ends (reset or timeout) within 30 s and what it got
# is a prefix of what was sent. Prints bytes moved, connections and failures.
# Usage: soak.sh RSTREAM_BINARY MINUTES
set -uo pipefail
bin=$1 minutes=$2
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
end=$((SECONDS + minutes * 60))
runs=0 kills=0 failures=0 moved=0 port=$((20000 + RANDOM % 20000))
fail() { echo "FAILED run $runs ($*)"; failures=$((failures + 1)); }
# Running and not yet a zombie (a zombie still answers kill -0).
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s:0:1}" != Z ]; }
while [ $SECONDS -lt $end ]; do
  runs=$((runs + 1)); port=$((port + 1))
  size=$(( (RANDOM * 32768 + RANDOM) % (64 << 20) + 1 ))
  send_ring=$(( 4096 + (RANDOM * 32 % 1044479) )) recv_ring=$(( 4096 + (RANDOM * 32 % 1044479) ))
  mode=(); [ $((RANDOM % 3)) -eq 0 ] && mode=(--iwarp)
  echo_mode=(); [ $((RANDOM % 2)) -eq 0 ] && echo_mode=(--echo)
  opts=(--provider tcp --send-ring "$send_ring" --recv-ring "$recv_ring" --peer-timeout 10 "${mode[@]}")
  head -c "$size" /dev/urandom > "$work/in"
  rm -f "$work/listen.err" # so the wait below reads this run's listener, not the last one's
  "$bin" listen --host 127.0.0.1 --port "$port" --once "${echo_mode[@]}" "${opts[@]}" > "$work/listened" 2> "$work/listen.err" &
  lpid=$!
  for _ in $(seq 50); do grep -q listening "$work/listen.err" 2>/dev/null && break; sleep 0.05; done
  "$bin" connect 127.0.0.1 "$port" "${opts[@]}" < "$work/in" > "$work/echoed" 2> "$work/connect.err" &
  cpid=$!
  victim=""
  if [ $((RANDOM % 3)) -eq 0 ]; then
    sleep "0.$((RANDOM % 10))"
    if [ $((RANDOM % 2)) -eq 0 ]; then victim=$lpid; else victim=$cpid; fi
    kill -9 "$victim" 2>/dev/null; kills=$((kills + 1))
  fi
  deadline=$((SECONDS + 30))
  nudged=""
  while { alive $lpid || alive $cpid; } && [ $SECONDS -lt $deadline ]; do
    if [ "$victim" = "$cpid" ] && [ -z "$nudged" ] && [ ! -s "$work/listened" ] && alive $lpid && [ $SECONDS -ge $((deadline - 20)) ]; then
      # A client killed before it connected leaves the listener waiting for one: give it one.
      nudged=1
      timeout 10 "$bin" connect 127.0.0.1 "$port" "${opts[@]}" < /dev/null > /dev/null 2>&1
    fi
    sleep 0.05
  done
  if alive $lpid || alive $cpid; then
    survivor=listen; [ "$victim" = "$lpid" ] && survivor=connect
    fail "hung: size $size rings $send_ring/$recv_ring ${mode[*]} ${echo_mode[*]} victim ${victim:+the other side, $survivor survived}: $(tail -c 300 "$work/$survivor.err" | tr '\n' ' ')"
    kill -9 $lpid $cpid 2>/dev/null
  fi
  wait $lpid 2>/dev/null; ls=$?; wait $cpid 2>/dev/null; cs=$?
  [ -n "$victim" ] && [ $SECONDS -gt $deadline ] && fail "the survivor took over 30 s to end"
  out="$work/listened"; [ ${#echo_mode[@]} -gt 0 ] && out="$work/echoed"
  got=$(stat -c %s "$out")
  moved=$((moved + got))
  if [ -z "$victim" ]; then
    [ $ls -eq 0 ] && [ $cs -eq 0 ] && cmp -s "$work/in" "$out" \
      || fail "size $size rings $send_ring/$recv_ring ${mode[*]} ${echo_mode[*]}: exits $ls/$cs, $got bytes; $(tail -n1 "$work/connect.err") $(tail -n1 "$work/listen.err")"
  elif [ "$got" -gt 0 ] && ! cmp -s -n "$got" "$work/in" "$out"; then
    fail "after a kill the $got bytes that arrived are not a prefix of what was sent"
  fi
done
echo "soak: $runs connections, $kills killed, $((moved >> 20)) MiB moved, $failures failed in $minutes min"
[ $failures -eq 0 ]
