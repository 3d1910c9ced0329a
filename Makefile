# Two commands for a fresh machine: `make demo` (the whole DAG, locally) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Empty: the `source` Param's default (core/settings.py), the Kaggle cats-vs-dogs zip.
DATA_SOURCE ?=
CONF ?= {}
# local: everything as processes on this machine; kubernetes: on `make cluster`'s cluster.
PLATFORM ?= local
DEMO_DIR ?= $(CURDIR)/.demo
PYTEST_ARGS ?=

# Each platform has its own Airflow home: its DAG is parsed with that platform's settings.
export AIRFLOW_HOME ?= $(CURDIR)/.airflow$(if $(filter kubernetes,$(PLATFORM)),-kubernetes)
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__API__PORT ?= 8080
export DOGS_CATS_STATE_DIR ?= $(DEMO_DIR)/state
# What a run's conf may name (core/policy.py, docs/security.md): local paths only under these
# roots (the demo's folder and a local DATA_SOURCE); set it to add your own data folders.
export DOGS_CATS_ALLOWED_ROOTS ?= $(shell $(PYTHON) -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \
	$(DEMO_DIR) $(if $(findstring ://,$(DATA_SOURCE)),,$(abspath $(DATA_SOURCE))))
# The single-node cluster's binaries (built once, reused) and run-time state.
export DOGS_CATS_CLUSTER_DIR ?= $(CURDIR)/.cluster
# The Prometheus `make up` and `make demo` run beside the local Triton, built from its Go module.
export DOGS_CATS_PROMETHEUS_BINARY ?= $(DOGS_CATS_CLUSTER_DIR)/bin/prometheus

.PHONY: install browser up demo test check doctor lint unit integration faults stop cluster cluster-packages \
	cluster-binaries cluster-down prometheus

## What this machine lacks for `make test`, `make cluster` and `make demo`, one line each with its fix
## (those targets run their part of it first, in the first seconds).
doctor:
	@$(PYTHON) -m cluster.preflight doctor

preflight-%:
	@$(PYTHON) -m cluster.preflight $*

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	$(BIN)/pip check
	touch $@

install: $(VENV)/.installed

## Debian's Chromium, for the test that renders the HTML batch report headless.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "the report test needs Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

## Start Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1:$(AIRFLOW__API__PORT),
## and Prometheus on 127.0.0.1:9090 (DOGS_CATS_PROMETHEUS_PORT) scraping the local Triton.
up: install prometheus
	$(BIN)/python -m pipeline.stack up

## Prometheus alone (cluster/build.sh prometheus), rebuilt when its pin changes.
prometheus: $(DOGS_CATS_PROMETHEUS_BINARY)
$(DOGS_CATS_PROMETHEUS_BINARY): cluster/versions.env cluster/build/prometheus/go.mod
	CLUSTER_DIR=$(DOGS_CATS_CLUSTER_DIR) cluster/build.sh prometheus

## Run the dogs_cats DAG end to end on this machine under the live scheduler, triggered
## through the REST API; Airflow and Triton keep running afterwards (make stop).
## PLATFORM=kubernetes: on the single-node cluster (make cluster), its registry and its GCS emulator.
ifeq ($(PLATFORM),kubernetes)
demo: preflight-demo cluster
	$(BIN)/python -m cluster platform --env-file $(DOGS_CATS_CLUSTER_DIR)/platform.env
	set -a && . $(DOGS_CATS_CLUSTER_DIR)/platform.env && set +a && \
	  $(BIN)/python -m pipeline.demo --source '$(DATA_SOURCE)' --conf '$(CONF)' --bucket gs://dogs-cats-demo
else
demo: preflight-demo install prometheus
	$(BIN)/python -m pipeline.demo --source '$(DATA_SOURCE)' --conf '$(CONF)' --bucket '$(DEMO_DIR)/bucket'
endif

## Lint, type-check, check the layers, then every test (unit, integration and cluster).
## As root it installs Debian's Chromium and the cluster's packages first; else it asks you to.
## The cluster's binaries are built once from the Go module proxy and reused.
## The Go build (CPU) runs beside the virtualenv's install (network and disk); apt runs alone.
test: preflight-test
	@$(MAKE) --no-print-directory cluster-packages browser
	@$(MAKE) --no-print-directory -j2 install cluster-binaries
	@$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS)

## The fast inner loop: lint, types, layers and the unit tests (no server starts), in a few minutes.
check: lint unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

integration: install browser cluster-packages cluster-binaries
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

## The fault-injection suite alone (it also runs in `make test`).
faults: install
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

## Stop the Airflow stack and the tritonserver that `make up` / `make demo` left running
## (PLATFORM=kubernetes: that demo's Airflow; the cluster keeps running until make cluster-down).
stop: install
	$(BIN)/python -m pipeline.stack stop

## Debian's containerd, runc, CNI plugins, iptables and docker.io at the upstream releases
## cluster/versions.env pins, installed by name (as root); prints the exact revisions installed.
cluster-packages:
	@$(PYTHON) -m cluster.preflight packages

## kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy, kubectl, etcd, the registry,
## BuildKit and the pause binary, built from the Go module proxy into $(DOGS_CATS_CLUSTER_DIR)/bin
## (reused); Go is GO_VERSION in cluster/versions.env, fetched by an older go (1.21+) itself.
cluster-binaries:
	CLUSTER_DIR=$(DOGS_CATS_CLUSTER_DIR) cluster/build.sh

## A real single-node Kubernetes on 127.0.0.1 and its bridge; `. .cluster/env` then puts its
## kubectl and kubeconfig first (kubeconfig in $(DOGS_CATS_CLUSTER_DIR)).
cluster: preflight-cluster install cluster-packages cluster-binaries
	$(BIN)/python -m cluster up

## Stop every cluster process, unmount its volumes, remove its bridge and iptables rules.
cluster-down: install
	$(BIN)/python -m cluster down
