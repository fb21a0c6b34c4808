# RStream: `make run` (the main job) and `make test` (every test) do all the set-up on a fresh
# Debian machine with Swift, installing the system packages they need when missing.

SYSTEM_PACKAGES := libfabric-dev libfabric-bin libibverbs-dev librdmacm-dev libnuma-dev pkg-config iproute2
SWIFT ?= swift
MIB ?= 256

.PHONY: run pipe test deps build release provider benchmarks fuzz soak asan docs clean

deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product rstream
	$(SWIFT) build -c release --product rstream-fi
	$(SWIFT) build -c release --product rstream-cperf
	$(SWIFT) build -c release --product rstream-shmfloor

# The libfabric provider: librstream-fi.so, self-contained (Swift runtime linked in), in
# .build/provider/release (a build directory of its own: its flags differ from `make release`).
# Point FI_PROVIDER_PATH at that directory, or copy the file beside the system's providers (README).
PROVIDER_BUILD := $(SWIFT) build -c release --scratch-path .build/provider --product rstream-fi -Xswiftc -static-stdlib
provider: deps
	$(PROVIDER_BUILD)
	@echo "provider: $$($(PROVIDER_BUILD) --show-bin-path)/librstream-fi.so"

# The main job: RStream against the raw core, kernel TCP, the same-host floor and UCX's stream API
# (ucx-utils, installed here when missing), on loopback, the two processes on CPUs 0 and 1.
run: release
	@dpkg-query -W -f='$${Status}' ucx-utils 2>/dev/null | grep -q "install ok installed" || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq ucx-utils >/dev/null 2>&1 || echo "ucx-utils not installed: the ucx-stream row is left out"; }
	"$$($(SWIFT) build -c release --show-bin-path)/rstream" perf --quick --cpu 0 --server-cpu 1

# A stream piped through `rstream listen` / `rstream connect` on loopback, checked byte for byte.
pipe: release
	scripts/pipe-demo.sh "$$($(SWIFT) build -c release --show-bin-path)/rstream" $(MIB)

# The Benchmarks package (ordo-one/benchmark): mallocs and throughput, checked against Thresholds/.
benchmarks: deps
	cd Benchmarks && $(SWIFT) package --disable-sandbox benchmark thresholds check

# The DocC catalog of the RStream library (swift-docc-plugin); a warning fails it.
docs: deps
	$(SWIFT) package generate-documentation --target RStream --warnings-as-errors
	@echo "docs: .build/plugins/Swift-DocC/outputs/RStream.doccarchive"

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --no-parallel
	for t in word block engine; do RSTREAM_FUZZ=$$t "$$($(SWIFT) build --show-bin-path)/rstream-fuzz" Fuzz/corpus/$$t/*; done
	SWIFT=$(SWIFT) scripts/test-tsan.sh
	$(MAKE) asan
	$(MAKE) docs

# The same-host tests under AddressSanitizer: a hostile peer scribbling in shared memory makes no
# out-of-bounds read or write (the listener it attacks is an ASan-built `rstream`, whose stderr the
# test reads). Leak checking is off: XCTest and Foundation.Process leak a few objects of their own.
asan: deps
	ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --no-parallel --scratch-path .build-asan --sanitize=address --filter SameHost

# libFuzzer over the word decoder, the connection-block parser and the engine on the in-memory
# wire, FUZZ_SECONDS each (address sanitizer on), from the committed corpus in Fuzz/corpus.
FUZZ_SECONDS ?= 60
FUZZ_BUILD := $(SWIFT) build -c debug --scratch-path .build-fuzz --product rstream-fuzz --sanitize=fuzzer --sanitize=address \
  -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp -Xswiftc -DRSTREAM_FUZZING
fuzz: deps
	$(FUZZ_BUILD)
	scripts/fuzz.sh "$$($(FUZZ_BUILD) --show-bin-path)/rstream-fuzz" $(FUZZ_SECONDS)

# Not in CI: random sizes, rings and modes, one side killed with kill -9 at random moments, both
# directions, checksummed, for SOAK_MINUTES.
SOAK_MINUTES ?= 30
soak: release
	scripts/soak.sh "$$($(SWIFT) build -c release --show-bin-path)/rstream" $(SOAK_MINUTES)

clean:
	rm -rf .build
