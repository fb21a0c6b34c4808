# RStream: `make run` (the main job) and `make test` (every test) do all the set-up on a fresh
# Debian machine with Swift, installing the system packages they need when missing.

SYSTEM_PACKAGES := libfabric-dev libfabric-bin libibverbs-dev librdmacm-dev libnuma-dev pkg-config
SWIFT ?= swift
MIB ?= 256

.PHONY: run test deps build release clean

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

# The main job: a stream piped through `rstream listen` / `rstream connect` on loopback.
run: release
	scripts/pipe-demo.sh "$$($(SWIFT) build -c release --show-bin-path)/rstream" $(MIB)

test: deps
	$(SWIFT) test

clean:
	rm -rf .build
