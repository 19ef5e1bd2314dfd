# ssekeeper — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Where clusters keep their state; the environment may override it (as `make test` does for its own).
SSEKEEPER_RUN_DIR ?= $(CURDIR)/tests/.run
export SSEKEEPER_RUN_DIR
RUN_DIR := $(SSEKEEPER_RUN_DIR)

.PHONY: help deps k8s-bins build images crds chart lint cluster-up cluster-down test test-unit test-fuzz test-load test-operator test-dataplane test-node demo bench bench-short

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install the Debian packages the tests need (redis-server, haproxy, openssl ...)
	@bash tests/scripts/install-deps.sh

k8s-bins: deps ## build etcd, kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy, kubectl, helm, CoreDNS, crictl (cached outside the repo)
	@bash tests/cluster/build.sh >/dev/null

images: deps k8s-bins ## build the OCI images (sidecar, operator, demo app, pause, redis, coredns) with buildah into target/images; prints their sizes
	@bash Containerfiles/build.sh

build: ## build every binary of the workspace
	$(CARGO) build --workspace --bins

crds: ## regenerate the CRD from the Rust types (crds/ and the chart)
	$(CARGO) run -q -p ssekeeper-operator --bin crdgen > crds/ssekeeper.dev_sseservices.yaml
	cp crds/ssekeeper.dev_sseservices.yaml charts/ssekeeper/files/ssekeeper.dev_sseservices.yaml

chart: k8s-bins ## lint and render the Helm chart
	python3 charts/tools/values-readme.py --check
	bin=$$(bash tests/cluster/build.sh) && $$bin/helm lint --strict charts/ssekeeper && $$bin/helm template ssekeeper charts/ssekeeper >/dev/null && echo "chart: lint and template ok"
	bin=$$(bash tests/cluster/build.sh) && HELM=$$bin/helm bash tests/monitoring/check.sh

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cluster-up: k8s-bins images ## start the control plane and the node (kubelet, containerd, kube-proxy, CoreDNS) on this machine (idempotent)
	@bash tests/cluster/up.sh

cluster-down: ## stop the cluster and its node, leaving nothing behind (processes, mounts, network, iptables, sysctls)
	@bash tests/cluster/down.sh

# `make test` runs its own control plane (own run dir and ports) and stops it at the end, so it
# never touches a cluster that `make demo` or `make cluster-up` started.
# The node is machine-wide, so a cluster of `make demo` must be down first (up.sh says so).
TEST_CLUSTER := SSEKEEPER_RUN_DIR=$(CURDIR)/tests/.run/test SSEKEEPER_APISERVER_PORT=17443 \
  SSEKEEPER_ETCD_CLIENT_PORT=17379 SSEKEEPER_ETCD_PEER_PORT=17380 SSEKEEPER_KCM_PORT=17257 \
  SSEKEEPER_SCHEDULER_PORT=17259
HOST_SNAPSHOT := $(CURDIR)/tests/.run/host-before-test.txt

test: deps k8s-bins lint chart build images ## everything: unit, golden, operator against the real API server, data plane with real Redis + HAProxy, e2e on the real node, the short bench
	@mkdir -p tests/.run && $(TEST_CLUSTER) bash tests/cluster/leftovers.sh snapshot $(HOST_SNAPSHOT)
	@$(TEST_CLUSTER) bash tests/cluster/up.sh >/dev/null
	@rc=0; \
	  $(MAKE) --no-print-directory test-unit || rc=1; \
	  $(MAKE) --no-print-directory test-fuzz || rc=1; \
	  $(MAKE) --no-print-directory test-load || rc=1; \
	  $(TEST_CLUSTER) $(MAKE) --no-print-directory test-operator || rc=1; \
	  $(MAKE) --no-print-directory test-dataplane || rc=1; \
	  $(TEST_CLUSTER) $(MAKE) --no-print-directory test-node || rc=1; \
	  $(MAKE) --no-print-directory bench-short || rc=1; \
	  $(TEST_CLUSTER) bash tests/cluster/down.sh --purge || rc=1; \
	  $(TEST_CLUSTER) bash tests/cluster/leftovers.sh check $(HOST_SNAPSHOT) || rc=1; \
	  exit $$rc

test-unit: ## unit and golden-file tests (no cluster needed)
	$(CARGO) test --no-fail-fast --workspace --exclude ssekeeper-tests
	$(CARGO) test --no-fail-fast -p ssekeeper-tests --lib --bins

test-load: ## the recording promise under load (50,000 events/s into real Redis) and rolling restarts at 5,000 and 20,000 events/s, in release so the load is real
	$(CARGO) test --no-fail-fast --release -p ssekeeper-sidecar --test recording -- --include-ignored --test-threads=1 --nocapture
	$(CARGO) build -q --release -p ssekeeper-sidecar -p ssekeeper-tests --bins
	$(CARGO) test --no-fail-fast --release -p ssekeeper-tests --test load_rolling -- --test-threads=1 --nocapture

FUZZ_SECONDS ?= 20
test-fuzz: ## fuzz the SSE parser, the cursor and session-key extraction, $(FUZZ_SECONDS) s each, from the checked-in corpus (nightly + cargo-fuzz)
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install -q --locked cargo-fuzz
	@cd sidecar/fuzz && for t in parser cursor session_key; do \
	  mkdir -p target/corpus/$$t && \
	  $(CARGO) +nightly fuzz run $$t target/corpus/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
	@# In CI the sanitizer build (GBs) is not needed again: keep the corpus, free the disk.
	@if [[ "$${CI:-}" == true ]]; then rm -rf sidecar/fuzz/target/x86_64-unknown-linux-gnu sidecar/fuzz/target/release sidecar/fuzz/target/debug; fi

test-operator: ## operator integration tests against the control plane (started if needed)
	$(CARGO) build -q --workspace --bins
	$(CARGO) test --no-fail-fast -p ssekeeper-tests --test operator -- --test-threads=3

test-dataplane: ## data-plane end-to-end tests: sidecars, demo app, real Redis and HAProxy
	$(CARGO) build -q --workspace --bins
	$(CARGO) test --no-fail-fast -p ssekeeper-tests --test 'dataplane*' -- --test-threads=1 --nocapture

test-node: ## end-to-end tests on the real node: pods, kube-proxy, CoreDNS, the chart's in-cluster operator (cluster started if needed)
	@bash tests/cluster/up.sh >/dev/null
	$(CARGO) test --no-fail-fast -p ssekeeper-tests --test 'node*' -- --test-threads=1 --nocapture

# The operator against the oldest Kubernetes the chart claims (kubeVersion), on a control plane of
# that version alone (etcd, apiserver, controller-manager; no node), with its own run dir and
# ports, stopped at the end. Not part of `make test`: a cold run builds that Kubernetes first.
# COMPAT_ETCD_VERSION empty: the etcd that Kubernetes version is tested with (build/dependencies.yaml).
COMPAT_K8S_VERSION ?= v1.30.14
COMPAT_ETCD_VERSION ?=
COMPAT_GO_BUILD_JOBS ?= 1
COMPAT_CLUSTER := SSEKEEPER_RUN_DIR=$(CURDIR)/tests/.run/compat SSEKEEPER_APISERVER_PORT=18443 \
  SSEKEEPER_ETCD_CLIENT_PORT=18379 SSEKEEPER_ETCD_PEER_PORT=18380 SSEKEEPER_KCM_PORT=18257 \
  SSEKEEPER_SCHEDULER_PORT=18259 SSEKEEPER_K8S_VERSION=$(COMPAT_K8S_VERSION) \
  SSEKEEPER_ETCD_VERSION=$(COMPAT_ETCD_VERSION) SSEKEEPER_GO_BUILD_JOBS=$(COMPAT_GO_BUILD_JOBS) CARGO=$(CARGO)
.PHONY: test-compat
test-compat: deps ## the operator suite, CRD and chart against a control plane of an older Kubernetes (COMPAT_K8S_VERSION, default v1.30.14; built and cached on first use; not in `make test`)
	@$(COMPAT_CLUSTER) bash tests/cluster/compat.sh

# Both run as root (a network namespace of their own); both fail only when a peer cannot run at all.
bench: deps ## direct, HAProxy, nginx, the sidecar (memory, Redis) side by side in release: target/bench/results.md + bench.png (~8 min)
	@bash tests/bench/bench.sh full

bench-short: deps ## the same bench in seconds, small counts (for make test: the bench never rots)
	@bash tests/bench/bench.sh short

demo: deps k8s-bins images ## the product live: cluster + node, chart, examples/chat.yaml, 60 streaming clients through a rolling update
	@bash tests/demo.sh
