# pgdaemon: the two commands a newcomer needs are `make demo` and `make test`.
# Each installs what it needs first (scripts/setup is idempotent).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= $(or $(PGDAEMON_VENV),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pgdaemon/venv)
export PGDAEMON_VENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
CARGO ?= cargo
STORE ?= etcd
ARCH ?= x86_64

.PHONY: help setup build test test-unit test-rust test-infra localstack-test demo demo-stop \
        lambda-zip bench-failover bench-fleet bench-sim bench-agent bench-backup

help:
	@echo "make demo            start a local 3-node cluster and run a failover drill (STORE=etcd|dynamodb)"
	@echo "make demo-stop       stop everything the demo started"
	@echo "make test            install dependencies, then run every test"
	@echo "make test-unit       the fast suite: pure logic and the in-memory store, no engines"
	@echo "make localstack-test the AWS path end to end (moto server, or AWS_ENDPOINT_URL=LocalStack)"
	@echo "make lambda-zip      build the coordinator Lambda package (ARCH=x86_64|arm64)"
	@echo "make bench-failover  failover drills (4 scenarios x etcd/DynamoDB, N=3 each): first write median/p95, direct and via HAProxy"
	@echo "make bench-fleet     one coordinator run over CLUSTERS=1000 registered clusters, DEAD=5 failing (etcd, DynamoDB)"
	@echo "make bench-backup    backup, restore and archive lag of a BENCH_SCALE=10 pgbench database (barman-cloud, moto S3)"
	@echo "make bench-sim       simulation over many seeds (SEEDS=10000)"
	@echo "make bench-agent     agent memory and CPU per probe loop on an idle 3-node cluster"

setup:
	scripts/setup

build: setup
	$(CARGO) build --workspace --all-targets

# Fast feedback while iterating: no external engines needed.
test-unit:
	$(CARGO) test -p pgdaemon-core

# Every Rust test: unit, store conformance (memory, etcd, DynamoDB on moto), real-Postgres agent
# tests (incl. synchronous mode, failsafe, events, monitor), coordinator and Lambda handler tests,
# simulation seeds, pgdctl, and the drills.
test-rust: setup
	$(CARGO) test --workspace --exclude pgdaemon-localstack-tests --no-fail-fast

test-infra:
	scripts/setup --infra
	scripts/check-infra

localstack-test:
	scripts/setup --infra
	scripts/localstack-test

# Every suite: the infrastructure checks beside the Rust build, then the Rust tests alone (they
# measure time), then the AWS path reusing the build (scripts/test says why in that order).
test:
	scripts/test

demo:
	STORE=$(STORE) scripts/demo

demo-stop:
	scripts/demo-stop

lambda-zip: setup
	scripts/lambda-zip --$(ARCH)

N ?= 3
bench-failover: setup
	N=$(N) scripts/bench-failover

# The fleet benchmark (drills/README.md): time, store reads and writes, failover times.
CLUSTERS ?= 1000
DEAD ?= 5
bench-fleet: setup
	$(CARGO) build -q -p pgdaemon-drills --bin bench-fleet
	CLUSTERS=$(CLUSTERS) DEAD=$(DEAD) $(or $(CARGO_TARGET_DIR),target)/debug/bench-fleet

SEEDS ?= 10000
# Backup, restore and archive lag of a pgbench database (BENCH_SCALE=10, about 150 MB; docs/backups.md).
BENCH_SCALE ?= 10
bench-backup: setup
	BENCH_SCALE=$(BENCH_SCALE) $(CARGO) test -p pgdaemon-drills --test backup -- --ignored --nocapture bench_backup

bench-sim:
	$(CARGO) run -p pgdaemon-sim --release -- --seeds $(SEEDS)

bench-agent: setup
	$(CARGO) bench -p pgdaemon-agent --bench agent_bench
