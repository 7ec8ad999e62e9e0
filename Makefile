# One Makefile for people and CI. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
# uv, pinned, in a bootstrap venv of its own (Debian's python3 refuses `pip install`): scripts/uv.sh
UV := bash scripts/uv.sh
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help venv up down scale-up scale-down kueue-build kueue-up kueue-down helm-build chart manifests demo test check lint typecheck unit integration bench bench-scale chaos compat docs image clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: $(VENV)/.synced  ## create .venv from uv.lock: the package with its worker extra, and the dev tools (uv: scripts/uv.sh)
$(VENV)/.synced: pyproject.toml uv.lock scripts/uv.sh
	$(UV) sync --frozen --extra worker -q
	@touch $@

up:  ## start RabbitMQ 4 (BROKER_NODES=3: a three-node cluster) and the single-node Kubernetes (idempotent)
	bash stack/up.sh

down:  ## stop the local stack and leave nothing behind
	bash stack/down.sh

scale-up: up  ## opt-in scale mode: build kwok (cached), add a simulated node, raise the controller manager's rate limits
	bash stack/scale.sh up

scale-down:  ## leave scale mode: remove the simulated node, stop kwok, default rate limits again
	bash stack/scale.sh down

kueue-build:  ## build Kueue's manager from the Go module proxy (cached by version; the Kueue tests need it)
	bash stack/kueue.sh build

kueue-up: venv up  ## opt-in: build Kueue's manager (cached), install its CRDs, run it as a process of the stack
	bash stack/kueue.sh up

kueue-down:  ## stop Kueue's manager and remove its webhooks
	bash stack/kueue.sh down

helm-build:  ## build Helm from the Go module proxy (cached by version; the chart's tests need it)
	bash stack/build-helm.sh

CHART := charts/k8s-job-dispatcher
# The chart's defaults name no broker and no credentials (it refuses to render without them), so
# it is linted with each values file of its ci/.
chart: helm-build  ## lint the Helm chart (with each values file of its ci/) and package it into dist/
	for f in $(CHART)/ci/*-values.yaml; do bash stack/helm.sh lint --strict $(CHART) --values $$f || exit 1; done
	bash stack/helm.sh package $(CHART) --destination dist

manifests: venv helm-build  ## write the kustomize base (manifests/base) from the Helm chart
	$(PY) scripts/render_base.py

demo: venv up  ## bring up the stack, run a worker, dispatch examples/hello.json, print the response
	bash scripts/demo.sh

check: lint typecheck  ## static checks: ruff, mypy --strict, import layers

lint: venv
	$(VENV)/bin/ruff check src tests harness bench scripts $(CHART)/files
	$(VENV)/bin/ruff format --check src tests harness bench scripts $(CHART)/files
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

unit: venv  ## fast tests, no services
	$(PY) -m pytest tests/unit -q

test: venv check up image kueue-build helm-build  ## the whole suite on the real stack (what CI runs)
	set -a && . .local/env && set +a && $(PY) -m pytest tests -q

bench: venv up  ## benchmarks (tables on stdout)
	set -a && . .local/env && set +a && PYTHONPATH=. $(PY) bench/run.py

bench-scale: venv scale-up  ## opt-in: 1k/5k/10k tasks in flight on simulated nodes (about 25 minutes); writes docs/benchmarks.md
	set -a && . .local/env && set +a && PYTHONPATH=. $(PY) bench/scale.py --write

chaos: venv  ## fault scenarios with 100+ tasks each on a three-node broker (about 20 minutes); writes docs/reliability.md
	BROKER_NODES=3 bash stack/up.sh
	bash stack/build-image.sh
	set -a && . .local/env && set +a && PYTHONPATH=. $(PY) bench/chaos.py --write

compat: venv  ## opt-in: the dispatch, queueing, task-options, resilience and Kueue e2e modules on K8S_VERSION=v1.X.Y (built and cached like the default); writes its row of docs/compatibility.md
	K8S_VERSION=$(K8S_VERSION) $(PY) scripts/compat.py --write

docs: venv  ## regenerate the tables made from the code: docs/settings.md, the metrics in docs/operations.md
	$(PY) scripts/docs_tables.py

image:  ## build the container image with podman (no Docker), import it into the local stack
	bash stack/build-image.sh

clean: down
	rm -rf .local $(VENV)
