#!/usr/bin/env bash
# Write the stack's configuration into .local/config (kubeconfigs, containerd, CNI, kubelet,
# scheduler, RabbitMQ). Cheap and idempotent: run by every `up`.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
mkdir -p "$CONF/cni" "$LOGS/rabbitmq"
"$STACK_DIR/mkpki.sh" "$PKI" "$NODE" "$POD_GATEWAY"

kubeconfig() {  # kubeconfig OUT CERT_NAME USER
  local b64; b64() { base64 -w0 < "$1"; }
  (umask 077; cat > "$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: local
  context: {cluster: local, user: $3}
current-context: local
KCFG
  )
}
kubeconfig "$LOCAL/kubeconfig" admin admin
kubeconfig "$CONF/controller-manager.kubeconfig" controller-manager kube-controller-manager
kubeconfig "$CONF/scheduler.kubeconfig" scheduler kube-scheduler
kubeconfig "$CONF/kubelet.kubeconfig" kubelet-client kubelet

cat > "$CONF/containerd.toml" <<EOT
version = 2
root = "$STACK_STATE/containerd"
state = "$STACK_RUN/containerd"
oom_score = 0
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STACK_STATE/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE, so a negative oom_score_adj is refused and runc fails
  # ("can't get final child's PID from pipe"); clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_tcp_service = true
  disable_apparmor = true
  enable_selinux = false
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "$STACK_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CONF/cni"
    max_conf_num = 1
EOT

# Pods get the bridge subnet only: no default route, no masquerading, nothing leaves the machine.
cat > "$CONF/cni/10-dispatcher-stack.conflist" <<EOT
{
  "cniVersion": "1.0.0",
  "name": "dispatcher-stack",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "isDefaultGateway": false,
    "ipMasq": false, "hairpinMode": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GATEWAY"}]],
             "dataDir": "$STACK_STATE/cni"}
  }]
}
EOT

cat > "$CONF/scheduler.yaml" <<EOT
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $CONF/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOT

cat > "$CONF/kubelet.yaml" <<EOT
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
failCgroupV1: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
protectKernelDefaults: false
clusterDomain: cluster.local
clusterDNS: []
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
registerNode: true
maxPods: 110
serializeImagePulls: false
shutdownGracePeriod: 0s
runtimeRequestTimeout: 2m
syncFrequency: 10s
fileCheckFrequency: 20s
nodeStatusUpdateFrequency: 5s
EOT

# RabbitMQ: one configuration directory per broker node (BROKER_NODES, 1 unless up.sh says 3),
# mounted at /etc/rabbitmq in the node's root (stack/rabbitmq-chroot.sh); paths below are the
# root's. Node N's ports are node 1's plus 10*(N-1) (lib.sh rabbitmq_node).
rm -rf "$CONF/rabbitmq.conf" "$CONF"/rabbitmq "$CONF"/rabbitmq-[0-9]* "$CONF/rabbitmq-enabled-plugins"
for n in $(seq "${BROKER_NODES:-1}"); do
  rabbitmq_node "$n"
  mkdir -p "$RMQ_CONF/pki" "$RMQ_LOGS"
  cat > "$RMQ_CONF/rabbitmq.conf" <<EOT
# Node $n of ${BROKER_NODES:-1}: $RMQ_NODENAME
listeners.tcp.1 = 127.0.0.1:$RMQ_AMQP_PORT
# Pods reach the broker through the bridge gateway only (nothing else is exposed).
listeners.tcp.2 = $POD_GATEWAY:$RMQ_AMQP_PORT
loopback_users.guest = true
# AMQP over TLS with a certificate of the stack's own CA; a client certificate, when presented,
# must chain to it too (tests/e2e/test_tls.py). /etc/rabbitmq/pki is .local/pki.
listeners.ssl.1 = 127.0.0.1:$RMQ_TLS_PORT
ssl_options.cacertfile = /etc/rabbitmq/pki/ca.crt
ssl_options.certfile = /etc/rabbitmq/pki/amqp-server.crt
ssl_options.keyfile = /etc/rabbitmq/pki/amqp-server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
log.console = false
log.file.level = info
# As RabbitMQ 4.3 behaves by default: transient non-exclusive queues and global QoS (prefetch
# per connection) are refused.
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
# Quorum queues get min(3, cluster size) members by default (rabbit's quorum_cluster_size), so on
# a three-node stack every node holds a replica.
EOT
  echo '[].' > "$RMQ_CONF/enabled_plugins"
done
