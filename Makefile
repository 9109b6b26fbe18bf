# Stampede — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
SERVICES_ENV = eval "$$(hack/services.sh env)"
PYTEST_WORKERS ?= 2

##@ Main
.PHONY: help
help: ## show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_.-]+:.*##/ {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: demo
demo: setup services-up ## run a local flash sale end to end and print its integrity audit
	@$(SERVICES_ENV); $(VENV)/bin/stampede burst --sale demo --stock 100 --buyers 300 --attempts 1000

.PHONY: test
test: setup ## set everything up on a fresh machine and run the whole suite
	@hack/services.sh up
	@set -o pipefail; rc=0; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) || rc=$$?; \
	  hack/services.sh down; exit $$rc

##@ Setup
.PHONY: setup
setup: ## create .venv with every component and the dev tools (re-runs only when pyproject.toml changes)
	@hack/venv.sh

.PHONY: services-up services-down services-status
services-up: ## start the project's own Redis and PostgreSQL on free loopback ports
	@hack/services.sh up
services-down: ## stop them
	@hack/services.sh down
services-status: ## show them
	@hack/services.sh status

##@ Quality
.PHONY: lint
lint: setup ## ruff, mypy --strict on the core, import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check core
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: setup ## format and auto-fix
	$(VENV)/bin/ruff format core app worker operator tests
	$(VENV)/bin/ruff check --fix .

##@ Benchmarks
.PHONY: bench-stock
bench-stock: setup services-up ## reserve ops/s against redis-benchmark EVALSHA of a trivial script, as a ratio
	@$(SERVICES_ENV); $(PY) bench/stock.py

.PHONY: clean
clean: ## stop services and remove local state (.run); keeps .venv and .tools
	-@hack/services.sh down
	rm -rf .run
