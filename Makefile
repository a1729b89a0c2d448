# pgdaemon: the two commands a newcomer needs are `make demo` and `make test`.
# Each installs what it needs first (scripts/setup is idempotent).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= $(or $(PGDAEMON_VENV),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pgdaemon/venv)
export PGDAEMON_VENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
CARGO ?= cargo

.PHONY: help setup build test test-unit test-rust test-infra demo demo-stop lambda-zip bench localstack-test

help:
	@echo "make demo        start a local 3-node cluster and run a failover drill"
	@echo "make demo-stop   stop the demo cluster"
	@echo "make test        install dependencies, then run every test (Rust, simulation, infrastructure)"
	@echo "make test-unit   the fast suite: pure logic and the in-memory store, no engines"
	@echo "make lambda-zip  build the coordinator Lambda package (ARCH=x86_64|arm64)"

setup:
	scripts/setup

build: setup
	$(CARGO) build --workspace --all-targets

# Fast feedback while iterating: no external engines needed.
test-unit:
	$(CARGO) test -p pgdaemon-core

test-rust: setup
	$(CARGO) test --workspace --no-fail-fast

test: test-rust
