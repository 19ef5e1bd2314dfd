# ssekeeper — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Where clusters keep their state; the environment may override it (as `make test` does for its own).
SSEKEEPER_RUN_DIR ?= $(CURDIR)/tests/.run
export SSEKEEPER_RUN_DIR
RUN_DIR := $(SSEKEEPER_RUN_DIR)
DEMO_DIR := $(RUN_DIR)/demo

.PHONY: help deps k8s-bins build crds chart lint cluster-up cluster-down test test-unit test-operator test-dataplane demo demo-down bench

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install the Debian packages the tests need (redis-server, haproxy, openssl ...)
	@bash tests/scripts/install-deps.sh

k8s-bins: ## build etcd, kube-apiserver, kube-controller-manager, kubectl, helm (cached outside the repo)
	@bash tests/cluster/build.sh >/dev/null

build: ## build every binary of the workspace
	$(CARGO) build --workspace --bins

crds: ## regenerate the CRD from the Rust types (crds/ and the chart)
	$(CARGO) run -q -p ssekeeper-operator --bin crdgen > crds/ssekeeper.dev_sseservices.yaml
	cp crds/ssekeeper.dev_sseservices.yaml charts/ssekeeper/crds/ssekeeper.dev_sseservices.yaml

chart: k8s-bins ## lint and render the Helm chart
	bin=$$(bash tests/cluster/build.sh) && $$bin/helm lint --strict charts/ssekeeper && $$bin/helm template ssekeeper charts/ssekeeper >/dev/null && echo "chart: lint and template ok"

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cluster-up: k8s-bins ## start the real control plane on loopback (idempotent)
	@bash tests/cluster/up.sh

cluster-down: demo-down ## stop the control plane, leaving no process behind
	@bash tests/cluster/down.sh

# `make test` runs its own control plane (own run dir and ports) and stops it at the end, so it
# never touches a cluster that `make demo` or `make cluster-up` started.
TEST_CLUSTER := SSEKEEPER_RUN_DIR=$(CURDIR)/tests/.run/test SSEKEEPER_APISERVER_PORT=17443 \
  SSEKEEPER_ETCD_CLIENT_PORT=17379 SSEKEEPER_ETCD_PEER_PORT=17380 SSEKEEPER_KCM_PORT=17257

test: deps k8s-bins lint build ## everything: unit, golden, operator against the real API server, data plane with real Redis + HAProxy
	@$(TEST_CLUSTER) bash tests/cluster/up.sh >/dev/null
	@trap '$(TEST_CLUSTER) bash tests/cluster/down.sh' EXIT; \
	  $(MAKE) --no-print-directory test-unit && \
	  $(TEST_CLUSTER) $(MAKE) --no-print-directory test-operator && \
	  $(MAKE) --no-print-directory test-dataplane

test-unit: ## unit and golden-file tests (no cluster needed)
	$(CARGO) test --workspace --exclude ssekeeper-tests
	$(CARGO) test -p ssekeeper-tests --lib --bins

test-operator: ## operator integration tests against the control plane (started if needed)
	$(CARGO) build -q --workspace --bins
	$(CARGO) test -p ssekeeper-tests --test operator -- --test-threads=3

test-dataplane: ## data-plane end-to-end tests: sidecars, demo app, real Redis and HAProxy
	$(CARGO) build -q --workspace --bins
	$(CARGO) test -p ssekeeper-tests --test 'dataplane*' -- --test-threads=1 --nocapture

bench: deps ## measurements in release: SSE codec, sidecar vs direct throughput, Redis appends (tables, no pass/fail on speed)
	$(CARGO) test --release -p ssekeeper-sidecar --test sse_throughput --test throughput --test store_bench -- --ignored --nocapture --test-threads=1

demo: deps k8s-bins build ## bring up the control plane, install the chart, apply examples/chat.yaml, show it
	@bash tests/demo.sh

demo-down: ## stop the demo's out-of-cluster operator
	@if [ -f $(DEMO_DIR)/operator.pid ]; then kill $$(cat $(DEMO_DIR)/operator.pid) 2>/dev/null || true; rm -f $(DEMO_DIR)/operator.pid; fi
