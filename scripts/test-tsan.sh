#!/usr/bin/env bash
# Every test again under ThreadSanitizer (volumes scaled down: TSan runs them ~10x slower).
# Fails on a failing test or on any ThreadSanitizer report. The provider's C programs are left
# out: they would load a TSan-built librstream-fi.so into a process without the TSan runtime
# (InProcessProviderTests drives the provider's own locks here instead).
# The namespace tests (real seconds of peer timeouts, no shared state) run once, in the plain pass.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
RSTREAM_STRESS_MIB=16 RSTREAM_CHURN=500 RSTREAM_SCALE_STREAMS=2000 ${SWIFT:-swift} test --no-parallel --scratch-path .build-tsan \
  --sanitize=thread -Xswiftc -DRSTREAM_TSAN --skip ProviderCTests --skip NamespaceTests 2>&1 | tee "$log"
if grep -q "WARNING: ThreadSanitizer" "$log"; then
  echo "ThreadSanitizer reported races (above)"
  exit 1
fi
