#!/usr/bin/env bash
# Runs each libFuzzer target of rstream-fuzz for SECONDS, starting from the committed corpus
# (Fuzz/corpus/TARGET, copied so the committed one stays small). A crash stops with its input
# saved under .build-fuzz/artifacts/. Usage: fuzz.sh FUZZER_BINARY SECONDS [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 seconds=$2; shift 2
targets=${*:-word block engine}
artifacts=$PWD/.build-fuzz/artifacts
mkdir -p "$artifacts"
for target in $targets; do
  work=$(mktemp -d)
  cp Fuzz/corpus/"$target"/* "$work"/
  echo "== fuzz $target for $seconds s"
  # The engine's scripts are short; longer inputs only repeat themselves.
  status=0
  SWIFT_BACKTRACE=enable=no RSTREAM_FUZZ=$target "$bin" -max_total_time="$seconds" -max_len=1024 \
    -artifact_prefix="$artifacts/$target-" -print_final_stats=1 "$work" > "$work.log" 2>&1 || status=$?
  grep -E "Done [0-9]+ runs|ERROR|SUMMARY|Fatal error" "$work.log" || true
  if [ "$status" -ne 0 ]; then tail -n 40 "$work.log"; echo "fuzz $target: failed (status $status), input in $artifacts"; exit 1; fi
  rm -rf "$work" "$work.log"
done
echo "fuzz: every target ran $seconds s without a crash"
