#!/usr/bin/env bash
# Bring up the local stack: RabbitMQ, etcd, kube-apiserver, controller-manager, scheduler,
# containerd and the kubelet, then the seed objects. Idempotent: a healthy running stack is left
# as it is. Writes .local/env and .local/kubeconfig. Every wait has a timeout and names the
# component that failed.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
COMPONENTS="rabbitmq etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet"
t0=$SECONDS

write_env() {
  cat > "$LOCAL/env" <<EOT
KUBECONFIG=$LOCAL/kubeconfig
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
AMQP_USER=guest
AMQP_PASSWORD=guest
K8S_IN_CLUSTER=false
TEST_IMAGE=$TEST_IMAGE
POD_AMQP_HOST=$POD_GATEWAY
POD_AMQP_USER=$POD_AMQP_USER
POD_AMQP_PASSWORD=$(cat "$LOCAL/pod-amqp-password")
POD_KUBERNETES_SERVICE_HOST=$POD_GATEWAY
POD_KUBERNETES_SERVICE_PORT=6443
EOT
}

all_running() {
  for c in $COMPONENTS epmd; do component_alive "$c" || return 1; done
  $KUBECTL get --raw /readyz >/dev/null 2>&1 || return 1
  rabbitmq_env; "$RABBITMQ_LIB/rabbitmqctl" -q status >/dev/null 2>&1
}

if [ -d "$STACK_RUN/pids" ] && all_running; then
  write_env; echo "up: already running (${SECONDS}s)"; exit 0
fi

"$STACK_DIR/install-deps.sh"
"$STACK_DIR/build-etcd.sh"
"$STACK_DIR/build-k8s.sh"
"$STACK_DIR/build-images.sh"
"$STACK_DIR/down.sh" --quiet          # clear whatever a crashed run left behind
"$STACK_DIR/configure.sh"
mkdir -p "$STACK_RUN/pids" "$STACK_STATE/pv/worker-pv-volume" "$STACK_STATE/rabbitmq/home" "$LOGS"
printf 'seeded by the local stack\n' > "$STACK_STATE/pv/worker-pv-volume/seed.txt"
for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
         kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward; do
  echo "$k=$(sysctl -n "$k")"
done > "$STACK_RUN/sysctl.saved"

# The pod bridge exists before any pod, so RabbitMQ can listen on its gateway address; the CNI
# bridge plugin adopts it. Pods have no other route: this is the only way they reach host services.
ip link add "$BRIDGE" type bridge 2>/dev/null || true
ip addr replace "$POD_GATEWAY/${POD_SUBNET#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

# RabbitMQ (epmd started first and by us, so the broker does not spawn an untracked one).
rabbitmq_env
start_component epmd epmd -address 127.0.0.1
start_component rabbitmq "$RABBITMQ_LIB/rabbitmq-server"

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

waitfor rabbitmq 90 "$RABBITMQ_LIB/rabbitmqctl" -q await_startup --timeout 5
# guest may only connect from loopback; pods get their own user with a fresh password.
[ -s "$LOCAL/pod-amqp-password" ] || (umask 077; openssl rand -hex 16 > "$LOCAL/pod-amqp-password")
"$RABBITMQ_LIB/rabbitmqctl" -q add_user "$POD_AMQP_USER" "$(cat "$LOCAL/pod-amqp-password")" >/dev/null
"$RABBITMQ_LIB/rabbitmqctl" -q set_permissions -p / "$POD_AMQP_USER" '.*' '.*' '.*' >/dev/null

$KUBECTL apply -f "$STACK_DIR/seed.yaml" >/dev/null
pvc_bound() { [ "$($KUBECTL -n dispatcher get pvc worker-pv-claim -o jsonpath='{.status.phase}')" = Bound ]; }
waitfor kube-controller-manager 60 pvc_bound
waitfor kube-controller-manager 60 $KUBECTL -n dispatcher get serviceaccount default
waitfor kube-controller-manager 60 $KUBECTL -n dispatcher get configmap kube-root-ca.crt
write_env
echo "up: stack ready in $((SECONDS - t0)) s — source .local/env"
