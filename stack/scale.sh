#!/usr/bin/env bash
# Scale mode (opt-in): simulated nodes from kwok against the real control plane of `make up`.
#   stack/scale.sh up     build kwok (cached), start it by recorded PID, add node kwok-node-0
#   stack/scale.sh down   remove the node and its pods, stop kwok
# The fake node is tainted kwok.x-k8s.io/node=fake:NoSchedule and labelled type=kwok, so only
# pods that ask for it land there: run the dispatcher with
#   JOB_NODE_SELECTOR=type=kwok JOB_TOLERATIONS=kwok.x-k8s.io/node=fake:NoSchedule
# Its pods run nothing: kwok marks them Running, then Succeeded with exit code 0 after
# KWOK_RUN_MILLISECONDS (default 1000) — or at the time a task sets in its env KWOK_FINISH_AT —
# and serves "done" as every task container's log.
# The controller manager and the scheduler are restarted with their client rate limits raised
# from the defaults (20 and 50 requests per second) to KCM_QPS (default 200): at the defaults the
# Job controller and the scheduler's bindings, not the dispatcher, cap how fast thousands of Jobs
# start and finish. `down` restarts both with the defaults again.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
KWOK_DIR=$STACK_CACHE/kwok-$KWOK_VERSION
NODE_NAME=kwok-node-0
RUN_MS=${KWOK_RUN_MILLISECONDS:-1000}
# How long a pod "runs": RUN_MS, or until the time (RFC 3339) in its task container's
# KWOK_FINISH_AT environment variable, so a benchmark can hold thousands of tasks in flight at once.
COMPLETE_DELAY=$(cat <<'YAML'
  delay:
    durationMilliseconds: RUN_MS
    durationFrom:
      jq:
        expression: '.spec.containers[]? | select(.name == "task") | .env[]? | select(.name == "KWOK_FINISH_AT") | .value'
YAML
)

up() {
  [ -f "$LOCAL/kubeconfig" ] || { echo "scale: the stack is not up (make up)" >&2; exit 1; }
  [ -x "$KWOK_DIR/bin/kwok" ] || require_go scale
  bash "$STACK_DIR/build-kwok.sh"
  if component_alive kwok; then echo "scale: kwok already runs"; else
    printf '%s stdout F done\n' "2026-01-01T00:00:00.000000000Z" >"$CONF/kwok-task.log"
    {  # a config with any stage replaces all defaults: nodes and pods both, then the logs
      cat "$KWOK_DIR/stage/node/fast/node-initialize.yaml"; echo "---"
      cat "$KWOK_DIR/stage/node/heartbeat/node-heartbeat.yaml"; echo "---"
      cat "$KWOK_DIR/stage/pod/fast/pod-ready.yaml"; echo "---"
      awk -v delay="${COMPLETE_DELAY//RUN_MS/$RUN_MS}" '/^  next:/ { print delay } { print }' \
        "$KWOK_DIR/stage/pod/fast/pod-complete.yaml"; echo "---"
      cat "$KWOK_DIR/stage/pod/fast/pod-delete.yaml"; echo "---"
      cat <<YAML
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {name: task-logs}
spec:
  selector: {matchNamespaces: [dispatcher]}
  logs:
  - containers: [task]
    logsFile: $CONF/kwok-task.log
YAML
    } >"$CONF/kwok.yaml"
    start_component kwok "$KWOK_DIR/bin/kwok" --kubeconfig="$LOCAL/kubeconfig" \
      --config="$CONF/kwok.yaml" --manage-all-nodes=false \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --node-ip=127.0.0.1 --node-port=10247 --server-address=127.0.0.1:10247 \
      --tls-cert-file="$PKI/kubelet-serving.crt" --tls-private-key-file="$PKI/kubelet-serving.key" \
      --cidr=10.245.0.0/16
  fi
  restart_controller_manager --kube-api-qps="${KCM_QPS:-200}" --kube-api-burst="$(( ${KCM_QPS:-200} * 2 ))"
  sed -e "s/^clientConnection:/clientConnection:\n  qps: ${KCM_QPS:-200}\n  burst: $(( ${KCM_QPS:-200} * 2 ))/" \
    "$CONF/scheduler.yaml" >"$CONF/scheduler-scale.yaml"
  restart_scheduler "$CONF/scheduler-scale.yaml"
  $KUBECTL apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: $NODE_NAME, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: "4000", memory: 16Ti, pods: "20000"}
  capacity: {cpu: "4000", memory: 16Ti, pods: "20000"}
YAML
  waitfor kwok 60 node_ready
  echo "scale: node $NODE_NAME is Ready (kwok $KWOK_VERSION, pods finish after $RUN_MS ms)"
}

restart_controller_manager() {
  stop_component kube-controller-manager
  start_controller_manager "$@"
  waitfor kube-controller-manager 60 curl -fsSk https://127.0.0.1:10257/healthz
}

restart_scheduler() {
  stop_component kube-scheduler
  start_scheduler "$@"
  waitfor kube-scheduler 60 curl -fsSk https://127.0.0.1:10259/healthz
}

node_ready() {
  [ "$($KUBECTL get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

down() {
  if [ -f "$LOCAL/kubeconfig" ] && $KUBECTL get node "$NODE_NAME" >/dev/null 2>&1; then
    $KUBECTL delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --force --grace-period=0 \
      >/dev/null 2>&1 || true
    $KUBECTL delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  fi
  stop_component kwok
  if [ -f "$LOCAL/kubeconfig" ] && component_alive kube-apiserver; then
    restart_controller_manager  # their default rate limits again
    restart_scheduler
  fi
  echo "scale: kwok stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: stack/scale.sh up|down" >&2; exit 2 ;;
esac
