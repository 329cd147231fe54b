# ztunnel-swift: the two commands a user needs are `make demo` and `make test`.
# Each installs the Debian packages it needs first (only the missing ones).

SHELL := /bin/bash
APT_PACKAGES := libssl-dev libnghttp2-dev libseccomp-dev libcap-dev pkg-config python3
FUZZ_SECONDS ?= 60
FUZZ_NO_MAIN = $(firstword $(wildcard /opt/swift/usr/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a) \
                           $(wildcard $(dir $(shell command -v swift))../lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a))

.PHONY: deps build demo test unit-test integration-test fuzz clean

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

build: deps
	swift build

demo: build
	python3 scripts/demo.py

unit-test: build
	swift test

integration-test: build
	python3 -m pytest -v Tests/integration

test: unit-test integration-test

# Fuzzes the IPC decoders for FUZZ_SECONDS with libFuzzer and AddressSanitizer (Fuzz/ package).
fuzz: deps
	cd Fuzz && swift build --scratch-path ../.build-fuzz --product IPCFuzz \
	  -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
	  -Xlinker $(FUZZ_NO_MAIN) -Xlinker -lstdc++
	python3 Fuzz/seeds.py .build-fuzz/corpus
	SWIFT_BACKTRACE=enable=no .build-fuzz/debug/IPCFuzz -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=.build-fuzz/ .build-fuzz/corpus

clean:
	rm -rf .build .build-fuzz
