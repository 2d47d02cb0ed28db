# Kubemaas developer entry points. `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := operator,dev,trainer,serving
# Every wheel the venv needs, downloaded once into a cache outside the repo, keyed by pyproject.toml's
# dependency declarations (e2e/cluster/wheels.py): a fresh clone then installs offline in about a minute
# instead of downloading torch again, and a change to a tool's settings in pyproject.toml keeps the cache.
WHEELS_ROOT := $(HOME)/.cache/kubemaas/wheels
WHEELHOUSE := $(WHEELS_ROOT)/$(shell $(PYTHON) e2e/cluster/wheels.py)
# uv installs the wheelhouse into the venv as hard links to its own cache (~/.cache/uv, filled once) and
# byte-compiles it as pip did (without, every test process that first imports torch compiles it beside the
# others): a fresh clone's venv in about 30 s, where pip unpacked and compiled its 6 GB in 73 s (2-core machine).
# Kept beside the wheelhouse, not in it: the wheelhouse's file names are part of the images' cache key.
UV_VERSION := 0.13.9
UV_WHEELS := $(HOME)/.cache/kubemaas/tools/uv-$(UV_VERSION)

# pytest exits 5 when a selection collects no tests; that is not a failure here.
define pytest
	$(BIN)/pytest $(1) || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected in $(1)" || exit $$rc; }
endef

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The stamp is rebuilt only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ ! -f $(WHEELHOUSE)/.complete ]; then \
	  echo "downloading dependencies into $(WHEELHOUSE) (once per pyproject.toml; torch is several GB)"; \
	  rm -rf $(WHEELS_ROOT) && mkdir -p $(WHEELHOUSE) && \
	  $(BIN)/pip download --quiet --dest $(WHEELHOUSE) pip 'setuptools>=77' wheel '.[$(EXTRAS)]' && \
	  touch $(WHEELHOUSE)/.complete; \
	fi
	@if [ ! -f $(UV_WHEELS)/.complete ]; then \
	  mkdir -p $(UV_WHEELS) && $(BIN)/pip download --quiet --dest $(UV_WHEELS) uv==$(UV_VERSION) && \
	  touch $(UV_WHEELS)/.complete; \
	fi
	$(BIN)/pip install --quiet --no-index --find-links $(UV_WHEELS) uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-index --find-links $(WHEELHOUSE) --link-mode hardlink \
	  --compile-bytecode -e '.[$(EXTRAS)]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with the operator, trainer, serving and dev dependencies (all extras)

.PHONY: lint
lint: venv ## ruff, mypy --strict and the import layers (.importlinter)
	$(BIN)/ruff check $(wildcard operator tests e2e charts)
	$(BIN)/ruff format --check $(wildcard operator tests e2e)
	$(BIN)/mypy --strict
	$(BIN)/lint-imports --no-cache

# The chart carries its own copy (Helm installs charts/<name>/crds/ before the templates), plus kopf's
# peering CRDs for replicas > 1. Both copies come from the same generator. So do the admission policy and
# the aggregated roles (kubemaas access): crds/admission/ and crds/roles/ for kubectl, and the chart's
# admission/ and roles/, which its templates read.
CHART := charts/kubemaas

.PHONY: crds
crds: venv ## regenerate crds/ and the chart's copies (CRDs, admission policy, roles) from the API models
	$(BIN)/kubemaas crds --out crds
	$(BIN)/kubemaas crds --out $(CHART)/crds --peering
	$(BIN)/kubemaas access --out crds
	$(BIN)/kubemaas access --out $(CHART)

.PHONY: crds-check
crds-check: venv ## fail when crds/ or the chart's copy is stale against the API models
	$(BIN)/kubemaas crds --check --out crds
	$(BIN)/kubemaas crds --check --out $(CHART)/crds --peering
	$(BIN)/kubemaas access --check --out crds
	$(BIN)/kubemaas access --check --out $(CHART)

.PHONY: chart-readme
chart-readme: venv ## regenerate the values table of the chart README from values.schema.json
	$(BIN)/python charts/values_readme.py $(CHART)

.PHONY: unit
# The unit tests' xdist workers: real torch ranks, tritonserver and subprocesses, each test on its own ports and
# temporary directories; two workers halve the stage on this 2-core machine.
UNIT_WORKERS ?= 2

unit: venv ## unit and integration tests (no cluster)
	$(call pytest,-n $(UNIT_WORKERS) tests)

# Where `make test` keeps the log of the build it runs beside the checks (shown after them).
PREPARE_LOG := $(VENV)/prepare.log

# Where `make test` keeps the log of the component build it starts before the venv exists.
EARLY_BUILD_LOG := /tmp/kubemaas-early-build-$(shell id -u).log

.PHONY: test
test: ## everything CI runs: lint, CRD freshness and unit tests (the cluster builds beside them), then e2e
	@# The Go build needs only the standard library (e2e/cluster/build.py): it starts with the system Python
	@# before the venv, whose wheels come from PyPI on a new machine (3 min of mostly waiting). `prepare`
	@# below waits for it (a lock) instead of building again; a failure here is reported by `prepare`.
	@# The cluster's components and images build in the background while lint and the unit tests run: the
	@# build waits on the Debian mirror and the disk for much of its time. Its log follows the unit tests.
	@early=; if [ -z "$${KUBEMAAS_E2E_KUBECONFIG:-}" ]; then \
	  setsid $(PYTHON) -m e2e.cluster.build > $(EARLY_BUILD_LOG) 2>&1 & early=$$!; \
	fi; \
	stop() { for group in "$$@"; do kill -- -$$group 2>/dev/null || true; done; wait || true; }; \
	$(MAKE) --no-print-directory venv || { rc=$$?; stop $$early; exit $$rc; }; \
	setsid $(MAKE) --no-print-directory prepare > $(PREPARE_LOG) 2>&1 & prepare=$$!; \
	checks=0; $(MAKE) --no-print-directory lint crds-check unit || checks=$$?; \
	if [ $$checks -ne 0 ]; then stop $$prepare $$early; exit $$checks; fi; \
	built=0; wait $$prepare || built=$$?; \
	if [ -n "$$early" ]; then \
	  wait $$early || true; echo "--- the components' build, started before the venv ($(EARLY_BUILD_LOG)):"; \
	  cat $(EARLY_BUILD_LOG); \
	fi; \
	echo "--- the local cluster's components and images, built beside the checks ($(PREPARE_LOG)):"; \
	cat $(PREPARE_LOG); exit $$built
	$(MAKE) --no-print-directory e2e

# The local control plane (e2e/cluster, docs/local-cluster.md): built from pinned
# Go modules into ~/.cache/kubemaas/cluster, run from ~/.cache/kubemaas/run.
CLUSTER := $(BIN)/python -m e2e.cluster

.PHONY: cluster-build
cluster-build: venv ## build etcd, Kubernetes, kwok, the training operator and helm (cached)
	$(CLUSTER) build

.PHONY: packages
packages: venv ## install every Debian package the project needs (e2e/cluster/debian.py; root); each step also installs its own
	$(CLUSTER) packages

.PHONY: images
images: venv ## build the real node's images (pause, base, operator, model-loader, trainer, triton-python), cached (e2e/cluster/images.py)
	$(CLUSTER) images

.PHONY: cluster-up
cluster-up: venv ## start the local control plane; prints its kubeconfig
	$(CLUSTER) up

.PHONY: cluster-down
cluster-down: venv ## stop the local control plane
	$(CLUSTER) down

# The e2e suite's xdist workers: most of a scenario is waiting on the API server and on pods, so more workers
# than cores; tests that must not overlap share an xdist_group (e2e/conftest.py). Four groups hold a worker each
# for most of the run (the real node's training and serving scenarios, its containerd tests, the throwaway
# control planes): two more take the kwok scenarios beside them.
E2E_WORKERS ?= 6

# The real node (containerd, kubelet, kube-proxy, CoreDNS) needs root; on by default where make runs as root.
REAL_NODE ?= $(if $(filter 0,$(shell id -u)),1,0)

.PHONY: prepare
prepare: venv ## build the local cluster's components and, with the real node, its images, side by side (cached)
	@if [ -z "$${KUBEMAAS_E2E_KUBECONFIG:-}" ]; then $(CLUSTER) prepare $(if $(filter 1,$(REAL_NODE)),--images); fi

.PHONY: e2e
e2e: venv prepare ## end-to-end suite (local cluster unless KUBEMAAS_E2E_KUBECONFIG names one; REAL_NODE=0: kwok only)
	@# The components and images are built (prepare) before pytest starts: a cold build's progress shows as it
	@# happens, and no test ever times it.
	@# A node of its own that must leave the host as it found it: alone, before the suite's cluster starts.
	@if [ -z "$${KUBEMAAS_E2E_KUBECONFIG:-}" ] && [ "$(REAL_NODE)" = 1 ]; then $(call pytest,-m host_restore e2e); fi
	KUBEMAAS_E2E_REAL_NODE=$(REAL_NODE) $(call pytest,-n $(E2E_WORKERS) --dist loadgroup --durations=10 -m "not host_restore" e2e)

.PHONY: bench-reconcile
bench-reconcile: venv ## operator vs raw-API baseline vs Kubeflow, N=100,500,1000, 10 min at rest (local cluster; ~45 min; not in make test)
	$(BIN)/python e2e/bench/bench_reconcile.py $(BENCH_ARGS)

.PHONY: bench-object-store
bench-object-store: venv ## the loader and publication from/to the local cluster's S3 server beside boto3's plain download and upload, 64 MiB and 1 GiB (~5 min)
	$(BIN)/python e2e/bench/bench_object_store.py $(BENCH_ARGS)

.PHONY: bench-fair-sharing
bench-fair-sharing: venv ## two teams' TrainingJobs sharing kwok GPUs by Kueue fair-sharing weights 2:1 (local cluster, root; ~7 min)
	$(BIN)/python e2e/bench/bench_fair_sharing.py $(BENCH_ARGS)

.PHONY: bench-lifecycle
bench-lifecycle: venv images ## ModelService apply -> first answer by stage, beside each stage's floor (real node, root)
	$(BIN)/python e2e/bench/bench_lifecycle.py $(BENCH_ARGS)

.PHONY: run
run: venv ## the local cluster with a real node and the operator installed by the chart (as root); else the operator here
	@# As root with no cluster configured: real node, images, the chart (e2e/cluster/quickstart.py), then the
	@# operator's log until Ctrl-C (the cluster keeps running: `make cluster-down`). Otherwise the operator runs
	@# here: against the configured cluster, or a kwok-only local one where pods are scheduled but never run.
	@if [ -z "$${KUBECONFIG:-}" ] && [ ! -f "$$HOME/.kube/config" ]; then \
		if [ "$$(id -u)" = 0 ]; then exec $(CLUSTER) run; fi; \
		echo "not root: no real node (containerd, iptables and mounts need root), so nothing would train or serve;"; \
		echo "starting the kwok-only local cluster and the operator here instead"; \
		export KUBECONFIG="$$($(CLUSTER) up)"; echo "using the local cluster: KUBECONFIG=$$KUBECONFIG"; \
	fi; \
	$(CLUSTER) apply-crds && exec $(BIN)/kubemaas run --standalone

.PHONY: query
query: venv ## ask the quickstart's ModelService (examples/quickstart/query.py) for predictions and its accuracy
	@if [ -z "$${KUBECONFIG:-}" ] && [ ! -f "$$HOME/.kube/config" ]; then \
		export KUBECONFIG="$$($(CLUSTER) kubeconfig)" KUBECTL="$${KUBECTL:-$$($(CLUSTER) build 2>/dev/null)/kubectl}"; \
	fi; \
	$(BIN)/python examples/quickstart/query.py

.PHONY: ci-cold
ci-cold: ## run .ci/run as a new machine would: a fresh clone of HEAD, an empty HOME and empty Go caches
	.ci/cold-run

.PHONY: clean
clean: ## remove the venv and caches inside the repo
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis operator/*.egg-info
