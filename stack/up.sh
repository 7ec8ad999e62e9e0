#!/usr/bin/env bash
# Bring up the local stack: RabbitMQ (BROKER_NODES=3: a three-node cluster), etcd, kube-apiserver, controller-manager, scheduler,
# containerd and the kubelet, then the seed objects. Idempotent: a healthy running stack is left
# as it is. Writes .local/env and .local/kubeconfig. Every wait has a timeout and names the
# component that failed.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet"
t0=$SECONDS
use_k8s_version "${K8S_VERSION_ASKED:-$K8S_VERSION_PINNED}"
BROKER_NODES=${BROKER_NODES:-1}
case "$BROKER_NODES" in
  1 | 2 | 3) export BROKER_NODES ;;
  *) echo "up: BROKER_NODES must be 1, 2 or 3 (3: a three-node cluster), not '$BROKER_NODES'" >&2; exit 1 ;;
esac
# rabbitmq, rabbitmq-2, ...: the broker nodes' component names (pid files, logs).
broker_components() { local n; for n in $(seq "$1"); do rabbitmq_node "$n"; echo "$RMQ_NAME"; done; }
# host_list HOST: HOST:port of every broker node, comma-separated (several nodes only).
host_list() {
  local n out=
  for n in $(seq "$BROKER_NODES"); do rabbitmq_node "$n"; out+="${out:+,}$1:$RMQ_AMQP_PORT"; done
  echo "$out"
}

write_env() {
  local amqp_host=127.0.0.1 pod_amqp_host=$POD_GATEWAY
  if [ "$BROKER_NODES" -gt 1 ]; then amqp_host=$(host_list 127.0.0.1) pod_amqp_host=$(host_list "$POD_GATEWAY"); fi
  cat > "$LOCAL/env" <<EOT
KUBECONFIG=$LOCAL/kubeconfig
BROKER_NODES=$BROKER_NODES
AMQP_HOST=$amqp_host
AMQP_PORT=5672
AMQP_USER=guest
AMQP_PASSWORD=guest
K8S_IN_CLUSTER=false
STACK_K8S_VERSION=$K8S_VERSION
TEST_IMAGE=$TEST_IMAGE
POD_AMQP_HOST=$pod_amqp_host
POD_AMQP_USER=$POD_AMQP_USER
POD_AMQP_PASSWORD=$(cat "$LOCAL/pod-amqp-password")
PRODUCER_AMQP_USER=$PRODUCER_AMQP_USER
PRODUCER_AMQP_PASSWORD=$(cat "$LOCAL/producer-amqp-password")
POD_KUBERNETES_SERVICE_HOST=$POD_GATEWAY
POD_KUBERNETES_SERVICE_PORT=6443
STACK_AMQPS_PORT=5671
STACK_CA_FILE=$PKI/ca.crt
STACK_AMQP_CLIENT_CERT=$PKI/amqp-client.crt
STACK_AMQP_CLIENT_KEY=$PKI/amqp-client.key
EOT
}

# guest may only connect from loopback. The two kinds of broker users (docs/security.md), each
# with a fresh password: the dispatcher's pods' and a producer's, granted what `dispatcher
# permissions` prints for the default names (tests/unit/test_permissions.py keeps them equal).
DISPATCHER_PERMISSIONS=('^(tasks|tasks\.control|responses|dispatcher\.internal|celery_delayed_(\d+|delivery|unroutable))$' '^(tasks|tasks\.control|responses|dispatcher\.internal|celery_delayed_(\d+|delivery|unroutable)|amq\.default)$' '^(tasks|tasks\.control|responses|dispatcher\.internal|celery_delayed_(\d+|delivery|unroutable))$')
PRODUCER_PERMISSIONS=('^(amq\.gen\-.*)$' '^(tasks|amq\.gen\-.*)$' '^(responses|amq\.gen\-.*)$')
broker_user() {  # USER PASSWORD-FILE CONFIGURE WRITE READ
  [ -s "$2" ] || (umask 077; openssl rand -hex 16 > "$2")
  "$STACK_DIR/rabbitmqctl.sh" 1 -q add_user "$1" "$(cat "$2")" >/dev/null 2>&1 ||
    "$STACK_DIR/rabbitmqctl.sh" 1 -q change_password "$1" "$(cat "$2")" >/dev/null
  "$STACK_DIR/rabbitmqctl.sh" 1 -q set_permissions -p / "$1" "$3" "$4" "$5" >/dev/null
}
broker_users() {
  broker_user "$POD_AMQP_USER" "$LOCAL/pod-amqp-password" "${DISPATCHER_PERMISSIONS[@]}"
  broker_user "$PRODUCER_AMQP_USER" "$LOCAL/producer-amqp-password" "${PRODUCER_PERMISSIONS[@]}"
}

# A running stack with another number of broker nodes or another Kubernetes than asked for is
# started again.
all_running() {
  [ "$(broker_nodes)" = "$BROKER_NODES" ] || return 1
  [ "$(running_k8s_version)" = "$K8S_VERSION" ] || return 1
  for c in $COMPONENTS epmd $(broker_components "$BROKER_NODES"); do component_alive "$c" || return 1; done
  $KUBECTL get --raw /readyz >/dev/null 2>&1 || return 1
  "$STACK_DIR/rabbitmqctl.sh" 1 -q status >/dev/null 2>&1
}

if [ -d "$STACK_RUN/pids" ] && all_running; then
  broker_users; write_env; echo "up: already running (${SECONDS}s)"; exit 0
fi

"$STACK_DIR/install-deps.sh"
if [ ! -x "$ETCD" ] || [ ! -f "$STACK_CACHE/k8s-$K8S_VERSION/.complete" ]; then require_go up; fi
"$STACK_DIR/build-etcd.sh"
K8S_VERSION=$K8S_VERSION "$STACK_DIR/build-k8s.sh"
"$STACK_DIR/build-images.sh"
"$STACK_DIR/build-rabbitmq.sh"
"$STACK_DIR/down.sh" --quiet          # clear whatever a crashed run left behind
"$STACK_DIR/configure.sh"
mkdir -p "$STACK_RUN/pids" "$STACK_STATE/pv/worker-pv-volume" "$LOGS"
echo "$BROKER_NODES" > "$STACK_RUN/broker-nodes"
echo "$K8S_VERSION" > "$STACK_RUN/k8s-version"
printf 'seeded by the local stack\n' > "$STACK_STATE/pv/worker-pv-volume/seed.txt"
# Tasks run as a non-root user (JOB_RUN_AS_USER); a hostPath volume keeps its owner (fsGroup does
# not apply to it), so the shared directory is writable by all, sticky like /tmp.
chmod 1777 "$STACK_STATE/pv/worker-pv-volume"
for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
         kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward; do
  echo "$k=$(sysctl -n "$k")"
done > "$STACK_RUN/sysctl.saved"

# The pod bridge exists before any pod, so RabbitMQ can listen on its gateway address; the CNI
# bridge plugin adopts it. Pods have no other route: this is the only way they reach host services.
ip link add "$BRIDGE" type bridge 2>/dev/null || true
ip addr replace "$POD_GATEWAY/${POD_SUBNET#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

# RabbitMQ from its root (stack/rabbitmq-chroot.sh). epmd is started first and by us, on the
# stack's own port and loopback only, so no node spawns an untracked one. The nodes share one
# Erlang cookie; they boot now, and join node 1's cluster once up (below).
start_component epmd chroot "$RABBITMQ_ROOT" /usr/bin/env -i ERL_EPMD_PORT="$EPMD_PORT" \
  /usr/bin/epmd -address 127.0.0.1 -port "$EPMD_PORT"
epmd_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$EPMD_PORT"); }
waitfor epmd 10 epmd_listening
(umask 077; openssl rand -hex 20 > "$STACK_RUN/erlang.cookie")
for n in $(seq "$BROKER_NODES"); do
  rabbitmq_node "$n"
  mkdir -p "$RMQ_DATA" "$RMQ_LOGS"
  install -m 0400 "$STACK_RUN/erlang.cookie" "$RMQ_DATA/.erlang.cookie"
  start_component "$RMQ_NAME" "$STACK_DIR/rabbitmq-chroot.sh" server "$n" /usr/lib/rabbitmq/bin/rabbitmq-server
done

start_component etcd "$ETCD" --name dispatcher-stack --data-dir "$ETCD_DATA" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster dispatcher-stack=http://127.0.0.1:2380 --log-level warn --unsafe-no-fsync
waitfor etcd 30 curl -fsS http://127.0.0.1:2379/health

start_component kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port=6443 \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.96.0.0/24 \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --allow-privileged=true --profiling=false --v=1
waitfor kube-apiserver 120 curl -fsS --cacert "$PKI/ca.crt" https://127.0.0.1:6443/readyz

start_controller_manager
start_scheduler

start_component containerd containerd --config "$CONF/containerd.toml" --log-level warn
waitfor containerd 30 ctr --address "$SOCK" version
for image in "$IMAGES"/*.tar; do
  $CTR images import --platform linux/amd64 "$image" >/dev/null || fail_component containerd "import of $image failed"
done

waitfor kube-controller-manager 60 curl -fsSk https://127.0.0.1:10257/healthz
waitfor kube-scheduler 60 curl -fsSk https://127.0.0.1:10259/healthz

start_component kubelet "$K8S_BIN/kubelet" --config="$CONF/kubelet.yaml" \
  --kubeconfig="$CONF/kubelet.kubeconfig" --hostname-override="$NODE" \
  --root-dir="$STACK_STATE/kubelet" --v=1
waitfor kubelet 60 curl -fsS http://127.0.0.1:10248/healthz
node_ready() {
  [ "$($KUBECTL get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] &&
  [ -z "$($KUBECTL get node "$NODE" -o jsonpath='{.spec.taints}')" ]
}
waitfor kubelet 120 node_ready

for n in $(seq "$BROKER_NODES"); do
  rabbitmq_node "$n"
  waitfor "$RMQ_NAME" 90 "$STACK_DIR/rabbitmqctl.sh" "$n" -q await_startup --timeout 5
done
for n in $(seq 2 "$BROKER_NODES"); do
  rabbitmq_node "$n"
  for step in stop_app reset "join_cluster dispatcher@localhost" start_app; do
    # shellcheck disable=SC2086  # the step's words are the command's arguments
    "$STACK_DIR/rabbitmqctl.sh" "$n" -q $step >"$LOGS/$RMQ_NAME-join.log" 2>&1 ||
      fail_component "$RMQ_NAME" "rabbitmqctl $step: $(tail -n 3 "$LOGS/$RMQ_NAME-join.log")"
  done
  waitfor "$RMQ_NAME" 90 "$STACK_DIR/rabbitmqctl.sh" "$n" -q await_startup --timeout 5
done
broker_users

$KUBECTL apply -f "$STACK_DIR/seed.yaml" >/dev/null
pvc_bound() { [ "$($KUBECTL -n dispatcher get pvc worker-pv-claim -o jsonpath='{.status.phase}')" = Bound ]; }
waitfor kube-controller-manager 60 pvc_bound
waitfor kube-controller-manager 60 $KUBECTL -n dispatcher get serviceaccount default
waitfor kube-controller-manager 60 $KUBECTL -n dispatcher get configmap kube-root-ca.crt
write_env
echo "up: stack ready in $((SECONDS - t0)) s — source .local/env"
