#!/usr/bin/env bash
# Kueue mode (opt-in): Kueue's manager as a process of the local stack, like its other controllers.
#   stack/kueue.sh build  build Kueue's manager (cached)
#   stack/kueue.sh up     build Kueue (cached), install its CRDs, start its manager by recorded
#                         PID, register its webhooks
#   stack/kueue.sh down   remove its webhooks, stop the manager (the CRDs stay until `make down`)
# The API server reaches the webhooks at https://127.0.0.1:$KUEUE_WEBHOOK_PORT (no Service: the
# stack has no service proxy), served with a certificate from the stack's own CA; Kueue's own
# certificate management is off. Only the batch/job integration is on, and the Job webhooks see
# only Jobs that carry Kueue's queue-name label: every other Job of the stack is left alone.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
KUEUE_DIR=$STACK_CACHE/kueue-$KUEUE_VERSION
WEBHOOK_PORT=${KUEUE_WEBHOOK_PORT:-9443}
HEALTH_PORT=${KUEUE_HEALTH_PORT:-8281}
CERTS=$CONF/kueue-certs
PY=$REPO_DIR/.venv/bin/python
[ -x "$PY" ] || PY=python3

serving_cert() {  # the webhook server's key pair, signed by the stack's CA, for 127.0.0.1
  mkdir -p "$CERTS"
  [ -f "$CERTS/tls.crt" ] && return 0
  (umask 077
   openssl req -newkey rsa:2048 -nodes -keyout "$CERTS/tls.key" -out "$CERTS/tls.csr" \
     -subj "/CN=kueue-webhook" 2>/dev/null
   printf '%s\n' "basicConstraints=critical,CA:FALSE" \
     "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
     "subjectAltName=IP:127.0.0.1" >"$CERTS/tls.ext"
   openssl x509 -req -in "$CERTS/tls.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
     -CAcreateserial -days 3650 -sha256 -extfile "$CERTS/tls.ext" -out "$CERTS/tls.crt" 2>/dev/null
   rm -f "$CERTS/tls.csr" "$CERTS/tls.ext")
}

# With its own certificate management off, Kueue's manager reads the certificate of its metrics
# server from a fixed path, even with that server off; it gets the webhook's. /etc/kueue is made
# here and noted (in $STACK_STATE, which outlives a reboot as /etc does), and removed again by
# `down` and stack/down.sh; an /etc/kueue the stack did not make is never written to.
METRICS_CERTS=/etc/kueue/metrics/certs
metrics_cert() {
  if [ -e /etc/kueue ] && [ ! -f "$KUEUE_ETC_MARK" ]; then
    echo "kueue: /etc/kueue exists and was not made by this stack; not touching it" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$KUEUE_ETC_MARK")"; touch "$KUEUE_ETC_MARK"
  install -D -m 600 "$CERTS/tls.key" "$METRICS_CERTS/tls.key"
  install -D -m 644 "$CERTS/tls.crt" "$METRICS_CERTS/tls.crt"
}

write_config() {
  cat >"$CONF/kueue.yaml" <<YAML
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:$HEALTH_PORT
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: $WEBHOOK_PORT
  certDir: $CERTS
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
integrations:
  frameworks: ["batch/job"]
clientConnection:
  qps: 50
  burst: 100
YAML
}

# The webhooks Kueue ships, kept for what runs here (Jobs and Kueue's own objects), each pointed
# at the manager's address with the stack's CA.
webhooks() {
  "$PY" - "$KUEUE_DIR/webhooks.yaml" "$PKI/ca.crt" "https://127.0.0.1:$WEBHOOK_PORT" <<'PY'
import base64, json, sys, yaml
source, ca, base = sys.argv[1:]
bundle = base64.b64encode(open(ca, "rb").read()).decode()
kept = ("-batch-v1-job", "-kueue-x-k8s-io-")
items = []
for doc in yaml.safe_load_all(open(source)):
    hooks = []
    for hook in doc["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        if not any(part in path for part in kept):
            continue
        hook["clientConfig"] = {"url": base + path, "caBundle": bundle}
        if "-batch-v1-job" in path:
            hook["objectSelector"] = {"matchExpressions": [
                {"key": "kueue.x-k8s.io/queue-name", "operator": "Exists"}]}
        hook.pop("namespaceSelector", None)
        hooks.append(hook)
    kind = doc["kind"]
    name = "kueue-" + ("mutating" if kind.startswith("Mutating") else "validating") + "-webhooks"
    items.append({**doc, "metadata": {"name": name}, "webhooks": hooks})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
}

build() {
  [ -x "$KUEUE_DIR/bin/kueue" ] || require_go kueue
  bash "$STACK_DIR/build-kueue.sh"
}

up() {
  [ -f "$LOCAL/kubeconfig" ] || { echo "kueue: the stack is not up (make up)" >&2; exit 1; }
  build
  $KUBECTL apply --server-side --force-conflicts -f "$KUEUE_DIR/crd" >/dev/null
  $KUBECTL wait --for=condition=Established --timeout=60s -f "$KUEUE_DIR/crd" >/dev/null
  $KUBECTL create namespace kueue-system --dry-run=client -o yaml | $KUBECTL apply -f - >/dev/null
  if component_alive kueue; then echo "kueue: already runs"; else
    serving_cert
    metrics_cert
    write_config
    start_component kueue env KUBECONFIG="$LOCAL/kubeconfig" "$KUEUE_DIR/bin/kueue" --config="$CONF/kueue.yaml" \
      --feature-gates=VisibilityOnDemand=false --zap-log-level=info
    waitfor kueue 90 curl -fsS "http://127.0.0.1:$HEALTH_PORT/readyz"
    waitfor kueue 30 curl -sS --cacert "$PKI/ca.crt" -o /dev/null "https://127.0.0.1:$WEBHOOK_PORT/"
  fi
  webhooks | $KUBECTL apply -f - >/dev/null
  echo "kueue: $KUEUE_VERSION runs (webhooks on 127.0.0.1:$WEBHOOK_PORT, log $LOGS/kueue.log)"
}

down() {
  if [ -f "$LOCAL/kubeconfig" ]; then
    $KUBECTL delete mutatingwebhookconfiguration kueue-mutating-webhooks --ignore-not-found >/dev/null 2>&1 || true
    $KUBECTL delete validatingwebhookconfiguration kueue-validating-webhooks --ignore-not-found >/dev/null 2>&1 || true
  fi
  stop_component kueue
  forget_metrics_cert
  echo "kueue: stopped"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 build|up|down" >&2; exit 2 ;;
esac
