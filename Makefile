# Stampede — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
SERVICES_ENV = eval "$$(hack/services.sh env)"
PYTEST_WORKERS ?= 2
# single: one Redis; cluster: also a 6-node Redis Cluster, which STAMPEDE_REDIS_URL then names (services-up)
REDIS_MODE ?= single
# What `make test` runs again on the Redis Cluster: the stock engine's core suite (stock buckets included) and an
# end-to-end sale (in one bucket and in four).
CLUSTER_SMOKE := tests/core/test_stock.py tests/core/test_stock_concurrency.py tests/core/test_restore.py \
  tests/core/test_stock_buckets.py tests/api/test_e2e.py::test_spike_audits_clean

##@ Main
.PHONY: help
help: ## show this help (colours only on a terminal)
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then b=$$'\033[1m' c=$$'\033[36m' r=$$'\033[0m'; else b= c= r=; fi; \
	  awk -v b="$$b" -v c="$$c" -v r="$$r" 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n%s%s%s\n", b, substr($$0, 5), r} \
	  /^[a-zA-Z0-9_.-]+:.*##/ {printf "  %s%-16s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)

.PHONY: demo
demo: setup tools services-up cluster-up ## run a local flash sale end to end and print its integrity audit
	@$(SERVICES_ENV); $(PY) -m stampede_dev.demo $(DEMO_ARGS)

.PHONY: burst
burst: setup services-up ## race 1,000 reserves by 300 buyers for 100 units against the stock engine alone, then audit
	@$(SERVICES_ENV); $(VENV)/bin/stampede burst --sale burst --stock 100 --buyers 300 --attempts 1000

.PHONY: demo-down
demo-down: ## stop the demo's services and control plane (PostgreSQL's data is deleted)
	-@hack/cluster.sh down
	-@hack/services.sh down

.PHONY: test
# The whole suite, then the stock engine's suites again on a 6-node Redis Cluster, then (as root) `make test-k8s`
# on the real one-node cluster, which is torn down afterwards whatever the outcome. Not root: that last part is
# skipped with the reason, as it needs network and mount namespaces, cgroups and iptables.
test: setup tools browser ## set everything up on a fresh machine and run the whole suite, then test-k8s as root
	@hack/services.sh up
	@hack/cluster.sh up >/dev/null
	@set -o pipefail; rc=0; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) || rc=$$?; \
	  if [ $$rc = 0 ]; then echo "==> again on the Redis Cluster: $(CLUSTER_SMOKE)"; \
	    $(PY) -m pytest -n $(PYTEST_WORKERS) --redis-cluster $(CLUSTER_SMOKE) || rc=$$?; fi; \
	  hack/cluster.sh down; hack/services.sh down; \
	  if [ $$rc = 0 ] && [ "$$(id -u)" = 0 ]; then echo "==> make test-k8s: the chart on a real cluster"; \
	    $(MAKE) --no-print-directory test-k8s || rc=$$?; $(MAKE) --no-print-directory k8s-down || rc=$$?; \
	  elif [ $$rc = 0 ]; then echo "==> make test-k8s SKIPPED: it needs root (network and mount namespaces," \
	    "cgroups, iptables); run it as root"; fi; \
	  exit $$rc

.PHONY: test-alerts
test-alerts: setup ## the chart's alerts alone through promtool check rules / test rules (also in make test)
	@hack/tools.sh promtool
	@$(PY) -m pytest -m promtool tests/chart/test_alerts.py $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: setup tools ## the core, API, worker, controller and fault suites against the local 6-node Redis Cluster
	@STAMPEDE_REDIS_MODE=cluster hack/services.sh up
	@hack/cluster.sh up >/dev/null
	@set -o pipefail; rc=0; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --redis-cluster -m "not single_redis" \
	  tests/core tests/api tests/worker tests/controller tests/faults $(PYTEST_ARGS) || rc=$$?; \
	  hack/cluster.sh down; hack/services.sh down; exit $$rc

##@ Setup
.PHONY: setup
setup: ## create .venv from the lock file requirements/dev.txt (re-runs only when it or pyproject.toml changes)
	@hack/venv.sh

.PHONY: lock
lock: ## regenerate the lock files requirements/*.txt from pyproject.toml (UPGRADE=1 moves every pin)
	@hack/lock.sh

.PHONY: browser
browser: ## install Debian's Chromium for the live page's browser test (hack/chromium.sh; says why when it cannot)
	@hack/chromium.sh

.PHONY: tools
tools: ## build the pinned Go-only tools (kube-apiserver, etcd, kubectl, k6, helm, actionlint, helm-docs) into .tools (cached)
	@hack/tools.sh all

.PHONY: cluster-up cluster-down
cluster-up: tools ## start the local control plane (etcd + kube-apiserver on loopback)
	@hack/cluster.sh up
cluster-down: ## stop it
	@hack/cluster.sh down

.PHONY: services-up services-down services-status
services-up: ## start the project's own Redis and PostgreSQL on free loopback ports (REDIS_MODE=cluster: + Redis Cluster)
	@STAMPEDE_REDIS_MODE=$(REDIS_MODE) hack/services.sh up
services-down: ## stop them and delete PostgreSQL's data
	@hack/services.sh down
services-status: ## show them
	@hack/services.sh status

##@ Ledger and worker
.PHONY: migrate
migrate: setup services-up ## apply the ledger and queue schema (idempotent, safe from several pods at once)
	@$(SERVICES_ENV); $(VENV)/bin/stampede migrate

.PHONY: worker
worker: migrate ## run one settle worker against the local services (SIGTERM/Ctrl-C stops it gracefully)
	@$(SERVICES_ENV); $(PY) -m stampede_worker

##@ Operator
.PHONY: operator
operator: migrate cluster-up ## run the operator (kopf, with leader election) on the local control plane, all namespaces
	@$(SERVICES_ENV); export KUBECONFIG="$$(hack/cluster.sh up 2>/dev/null | tail -n1)"; \
	  KUBECTL="$$(hack/tools.sh path kubectl)"; \
	  "$$KUBECTL" apply --server-side -f crds/flashsale.yaml >/dev/null && \
	  $(PY) -m stampede_operator.peering crds | "$$KUBECTL" apply --server-side -f - >/dev/null && \
	  "$$KUBECTL" wait --for=condition=Established --timeout=30s crd/flashsales.stampede.dev \
	    crd/clusterkopfpeerings.kopf.dev crd/kopfpeerings.kopf.dev >/dev/null && \
	  $(PY) -m stampede_operator.peering object | "$$KUBECTL" apply --server-side -f - >/dev/null && \
	  exec $(VENV)/bin/kopf run -m stampede_operator.main --all-namespaces

##@ Quality
.PHONY: lint
lint: setup ## ruff, mypy --strict on every package, the tests, benchmarks and scripts, import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: setup ## format and auto-fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

##@ Run
# A fixed secret for local runs only; a deployment sets STAMPEDE_JWT_SECRET from a Secret.
DEV_JWT_SECRET ?= stampede-local-dev-secret-change-me-0123456789

.PHONY: serve
serve: setup services-up ## run the buy API under gunicorn on 127.0.0.1:8000 (strategies, live page, demo buyers on)
	@$(SERVICES_ENV); export STAMPEDE_JWT_SECRET=$${STAMPEDE_JWT_SECRET:-$(DEV_JWT_SECRET)} \
	    STAMPEDE_STRATEGIES_ENABLED=$${STAMPEDE_STRATEGIES_ENABLED:-true} \
	    STAMPEDE_LIVE_PAGE=$${STAMPEDE_LIVE_PAGE:-true} STAMPEDE_ENVIRONMENT=$${STAMPEDE_ENVIRONMENT:-development} \
	    STAMPEDE_DEMO_BUYERS=$${STAMPEDE_DEMO_BUYERS:-true}; \
	  $(VENV)/bin/stampede migrate $$([ "$$STAMPEDE_STRATEGIES_ENABLED" = true ] && echo --with-strategies) >/dev/null || exit 1; \
	  echo "==> token for buyer-1: $$($(VENV)/bin/stampede mint-token buyer-1)"; \
	  echo "==> live page: http://$${STAMPEDE_BIND:-127.0.0.1:8000}/live"; \
	  exec $(VENV)/bin/gunicorn -c python:stampede_api.gunicorn_conf stampede_api.asgi:app

.PHONY: api
api: serve ## alias of serve

##@ Benchmarks
.PHONY: bench
bench: setup tools services-up ## k6 spike against strategies v1-v4 and the /v1 path in one run: bench/results/<date>.md + PNG
	@$(SERVICES_ENV); $(PY) bench/strategies.py $(BENCH_ARGS)

.PHONY: bench-api
bench-api: setup services-up ## buy API under gunicorn vs a Falcon hello route: stock 10M and a 5k sell-out (wrk)
	@command -v wrk >/dev/null || { echo "==> installing wrk (Debian package)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@$(SERVICES_ENV); $(PY) bench/api.py $(BENCH_ARGS)

.PHONY: bench-protocols
bench-protocols: setup services-up ## request-head protocols: bounded httptools (the API's) and h11 vs plain httptools (wrk)
	@command -v wrk >/dev/null || { echo "==> installing wrk (Debian package)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@$(SERVICES_ENV); $(PY) bench/protocols.py $(BENCH_ARGS)

.PHONY: bench-pipeline
bench-pipeline: setup services-up ## a sale at full speed: API under gunicorn + settle workers during wrk load, vs hello
	@command -v wrk >/dev/null || { echo "==> installing wrk (Debian package)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@$(SERVICES_ENV); $(PY) bench/pipeline.py $(BENCH_ARGS)

.PHONY: bench-stock
bench-stock: setup services-up ## reserve ops/s vs redis-benchmark EVALSHA of a trivial script; single Redis vs Redis Cluster
	@hack/services.sh redis-cluster-up
	@$(SERVICES_ENV); $(PY) bench/stock.py $(BENCH_ARGS)

.PHONY: bench-soak
bench-soak: setup tools services-up cluster-up ## steady load on a live sale (SOAK_RATE=500 req/s, SOAK_MINUTES=10): RSS, Redis, backlog, p99 per minute
	@$(SERVICES_ENV); $(PY) bench/soak.py $(BENCH_ARGS)

.PHONY: bench-redis-memory
bench-redis-memory: setup services-up ## Redis bytes per settled reservation (used_memory, MEMORY USAGE) vs full records
	@$(SERVICES_ENV); $(PY) bench/redis_memory.py $(BENCH_ARGS)

.PHONY: bench-operator
bench-operator: setup services-up ## operator idle over 100 sales (two of 1M settled rows): CPU, RSS, reconcile pass p99
	@$(SERVICES_ENV); export KUBECONFIG="$$(hack/cluster.sh up 2>/dev/null | tail -n1)"; \
	  $(PY) bench/operator.py $(BENCH_ARGS)

.PHONY: bench-worker
bench-worker: setup services-up ## settle-worker drain rate at concurrency 1/4/16 vs a plain batched INSERT, and lag
	@$(SERVICES_ENV); $(PY) bench/worker.py $(BENCH_ARGS)

##@ Kubernetes
# A real one-node cluster on this machine (hack/k8s.sh: the Kubernetes components, containerd and CoreDNS run in
# a network and mount namespace of their own; needs root) and the images the chart runs, built here from Debian's
# packages with no registry (hack/images.sh): stampede-{api,worker,operator,redis,postgresql,k6}:$(IMAGE_TAG).
IMAGE_TAG ?= dev
CHART := charts/stampede

.PHONY: k8s-up k8s-down images test-k8s
k8s-up: tools ## start the real cluster (kubelet, containerd, scheduler, controller-manager, kube-proxy, CoreDNS)
	@hack/tools.sh node
	@hack/k8s.sh up >/dev/null
k8s-down: ## stop it and remove everything it made (processes, namespaces, mounts, cgroups, iptables rules, state)
	@hack/k8s.sh down
	@hack/images.sh down
images: ## build every image from a debootstrap base (cached); load them into the cluster when it runs
	@if hack/k8s.sh status >/dev/null 2>&1; then IMAGE_TAG=$(IMAGE_TAG) hack/images.sh load; \
	  else IMAGE_TAG=$(IMAGE_TAG) hack/images.sh build; fi
test-k8s: k8s-up ## on the real cluster: helm install, a live sale, helm test, a spike, operator killed, API pod deleted
	@$(MAKE) --no-print-directory images
	@IMAGE_TAG=$(IMAGE_TAG) hack/test-k8s.sh

.PHONY: chart-docs
chart-docs: ## regenerate charts/stampede/README.md from values.yaml comments (helm-docs; the suite checks it)
	@"$$(hack/tools.sh path helm-docs)" --chart-search-root $(CHART) --template-files README.md.gotmpl \
	  --sort-values-order file --skip-version-footer --log-level warning

.PHONY: chart-crds
chart-crds: ## copy crds/flashsale.yaml into the chart's files/crds/ (tests/chart checks they are equal; files/k6 links to k6/)
	cp crds/flashsale.yaml $(CHART)/files/crds/flashsale.yaml

.PHONY: chart-lint
chart-lint: ## helm lint the chart with its default values and with each ci/*-values.yaml
	@helm="$$(hack/tools.sh path helm)" && "$$helm" lint --strict $(CHART) && \
	  for f in $(CHART)/ci/*-values.yaml; do "$$helm" lint --strict $(CHART) -f "$$f" || exit 1; done

.PHONY: clean
clean: ## stop the control plane and services, remove local state (.run and PostgreSQL's data); keeps .venv, .tools
	-@hack/cluster.sh down
	-@hack/services.sh down
	rm -rf .run
