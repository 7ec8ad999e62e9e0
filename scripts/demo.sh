#!/usr/bin/env bash
# The main job end to end: a worker on the local stack, examples/hello.json dispatched, its
# response printed. Expects `make up` to have run (the Makefile does it first).
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; . .local/env; set +a
export JOB_NAMESPACE=dispatcher
log=.local/logs/demo-worker.log
.venv/bin/dispatcher worker --concurrency 4 >"$log" 2>&1 &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null; wait "$worker" 2>/dev/null || true' EXIT
echo "demo: worker started (pid $worker, log $log); dispatching examples/hello.json"
.venv/bin/dispatcher submit examples/hello.json --wait --wait-timeout 120
