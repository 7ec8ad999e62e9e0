# Shared paths and helpers for the local stack scripts. Sourced, never run.
# shellcheck shell=bash
STACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$STACK_DIR/.." && pwd)
K8S_VERSION_ASKED=${K8S_VERSION:-}   # make compat K8S_VERSION=v1.35.4: another Kubernetes than the pinned one
. "$STACK_DIR/versions.env"
K8S_VERSION_PINNED=$K8S_VERSION

STACK_CACHE=${STACK_CACHE:-/var/cache/dispatcher-stack}   # built binaries and images, keyed by version
STACK_STATE=/var/lib/dispatcher-stack                     # containerd/kubelet roots, PV data, broker data
STACK_RUN=/run/dispatcher-stack                           # pids, sockets, saved sysctls
ETCD_DATA=/dev/shm/dispatcher-stack-etcd
LOCAL=${LOCAL_DIR:-$REPO_DIR/.local}                      # per-checkout: pki, config, logs, env
PKI=$LOCAL/pki CONF=$LOCAL/config LOGS=$LOCAL/logs

ETCD=$STACK_CACHE/etcd-$ETCD_VERSION/bin/etcd
IMAGES=$STACK_CACHE/images-$IMAGES_VERSION
SOCK=$STACK_RUN/containerd/containerd.sock
NODE=127.0.0.1
BRIDGE=dstack0
POD_SUBNET=10.244.0.0/24
POD_GATEWAY=10.244.0.1
POD_AMQP_USER=dispatcher-pod
PRODUCER_AMQP_USER=producer
CTR="ctr --address $SOCK -n k8s.io"

# use_k8s_version V: the Kubernetes binaries the scripts run (K8S_BIN, KUBECTL) are those of V.
use_k8s_version() {
  K8S_VERSION=$1
  K8S_BIN=$STACK_CACHE/k8s-$K8S_VERSION/bin
  KUBECTL="$K8S_BIN/kubectl --kubeconfig=$LOCAL/kubeconfig"
}
# Which Kubernetes: the one asked for in the environment, else the one the running stack was
# started with (up.sh records it), else the pinned one. up.sh itself starts the asked or pinned one.
running_k8s_version() { cat "$STACK_RUN/k8s-version" 2>/dev/null || true; }
use_k8s_version "${K8S_VERSION_ASKED:-$(running_k8s_version)}"
[ -n "$K8S_VERSION" ] || use_k8s_version "$K8S_VERSION_PINNED"
RABBITMQ_ROOT=$STACK_CACHE/rabbitmq-$RABBITMQ_VERSION

# Every component is started in its own session (setsid) so that its process group id is its
# recorded PID: stopping it never needs a process name.
start_component() {
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$STACK_RUN/pids/$name.pid"
}

# start_controller_manager [FLAG...]: the controller manager as the stack runs it, plus FLAGs
# (scale mode raises its client rate limits).
start_controller_manager() {
  start_component kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range=10.96.0.0/24 --controllers='*' \
    --node-monitor-period=2s --pvclaimbinder-sync-period=2s --v=1 "$@"
}

# start_scheduler [CONFIG]: the scheduler with its configuration file (scale mode passes one whose
# client rate limits are raised).
start_scheduler() {
  start_component kube-scheduler "$K8S_BIN/kube-scheduler" --config="${1:-$CONF/scheduler.yaml}" \
    --bind-address=127.0.0.1 --authentication-kubeconfig="$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CONF/scheduler.kubeconfig" --v=1
}

component_alive() {
  local f=$STACK_RUN/pids/$1.pid
  [ -f "$f" ] && pid_running "$(cat "$f")"
}

fail_component() {
  local name=$1 why=$2
  echo "up: $name failed: $why" >&2
  if [ -f "$LOGS/$name.log" ]; then
    echo "---- last 30 lines of $LOGS/$name.log ----" >&2
    tail -n 30 "$LOGS/$name.log" >&2
  fi
  exit 1
}

# waitfor NAME SECONDS CMD... : poll CMD until it succeeds; on timeout name the component and show its log.
waitfor() {
  local name=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! component_alive "$name" && [ -f "$STACK_RUN/pids/$name.pid" ]; then
      fail_component "$name" "the process exited"
    fi
    [ $SECONDS -lt $end ] || fail_component "$name" "not ready after ${secs} s"
    sleep 0.5
  done
}

# pid_running PID: the process exists and has not exited (a zombie waiting for its parent to
# reap it counts as exited: components are reparented and reaped only from time to time).
pid_running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# stop_component NAME: TERM the process group of the recorded PID, KILL after 10 s.
stop_component() {
  local f=$STACK_RUN/pids/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if pid_running "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do pid_running "$pid" || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null
  fi
  rm -f "$f"
}

# forget_metrics_cert: remove the /etc/kueue that stack/kueue.sh made (and only that one).
KUEUE_ETC_MARK=$STACK_STATE/kueue-made-etc-kueue
forget_metrics_cert() {
  if [ -f "$KUEUE_ETC_MARK" ]; then rm -rf /etc/kueue; rm -f "$KUEUE_ETC_MARK"; fi
}

# The broker: RabbitMQ $RABBITMQ_VERSION and its Erlang run chrooted into $RABBITMQ_ROOT
# (build-rabbitmq.sh), each node by stack/rabbitmq-chroot.sh with its own data, configuration and
# log directories bind-mounted into the root in a private mount namespace. BROKER_NODES nodes (1,
# or 3 for a cluster) share one epmd of the stack on its own port, loopback only, and one cookie.
EPMD_PORT=4380
# broker_nodes: how many nodes the running (or last started) stack has.
broker_nodes() { cat "$STACK_RUN/broker-nodes" 2>/dev/null || echo 1; }
# rabbitmq_node N: node N's names, ports and directories. Node 1 keeps the single-node layout;
# node N's ports are node 1's plus 10*(N-1) (AMQP 5682, TLS 5681, distribution 25682 for node 2).
rabbitmq_node() {
  local n=$1 off=$((10 * ($1 - 1)))
  RMQ_NAME=rabbitmq; [ "$n" -eq 1 ] || RMQ_NAME=rabbitmq-$n             # component (pid file, log)
  RMQ_NODENAME=dispatcher@localhost; [ "$n" -eq 1 ] || RMQ_NODENAME=dispatcher-$n@localhost
  RMQ_AMQP_PORT=$((5672 + off)) RMQ_TLS_PORT=$((5671 + off)) RMQ_DIST_PORT=$((25672 + off))
  RMQ_DATA=$STACK_STATE/$RMQ_NAME    # /var/lib/rabbitmq in the root: HOME (cookie), mnesia
  RMQ_CONF=$CONF/$RMQ_NAME           # /etc/rabbitmq: rabbitmq.conf, enabled_plugins, pki/ (= $PKI)
  RMQ_LOGS=$LOGS/$RMQ_NAME           # /var/log/rabbitmq
}

# start_broker_node N: start broker node N from the root and wait until it has booted. RabbitMQ
# 4.0.5 denying transient non-exclusive queues (as 4.3 does) sometimes refuses to boot a node that
# rejoins running ones: it checks that no such queue exists before it has copied their queue table
# and fails (`failed_to_deny_deprecated_features`). Its data is intact; a later boot succeeds.
start_broker_node() {
  local n=$1 attempt end
  rabbitmq_node "$n"
  for attempt in 1 2 3 4 5 6; do
    start_component "$RMQ_NAME" "$STACK_DIR/rabbitmq-chroot.sh" server "$n" /usr/lib/rabbitmq/bin/rabbitmq-server
    end=$((SECONDS + 90))
    until "$STACK_DIR/rabbitmqctl.sh" "$n" -q await_startup --timeout 5 >/dev/null 2>&1; do
      if ! component_alive "$RMQ_NAME"; then
        if [ "$attempt" -lt 6 ] && grep -q failed_to_deny_deprecated_features "$LOGS/$RMQ_NAME.log"; then
          echo "broker: $RMQ_NAME refused to boot (failed_to_deny_deprecated_features); starting it again" >&2
          rm -f "$STACK_RUN/pids/$RMQ_NAME.pid"; sleep 2
          continue 2
        fi
        fail_component "$RMQ_NAME" "the process exited"
      fi
      [ $SECONDS -lt $end ] || fail_component "$RMQ_NAME" "not ready after 90 s"
      sleep 0.5
    done
    return 0
  done
}

# Kept for scripts written for the Debian 12 broker on the host (`rabbitmq_env;
# "$RABBITMQ_LIB/rabbitmqctl" ARGS`): that rabbitmqctl is stack/rabbitmqctl.sh against node 1.
RABBITMQ_LIB=$STACK_DIR/bin
rabbitmq_env() { :; }

# install_packages WHO PKG...: apt-get install the Debian packages that are missing, without
# letting their maintainer scripts start any service (the stack starts and stops everything by PID).
install_packages() {
  local who=$1 p missing=(); shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then echo "$who: all packages present"; return 0; fi
  echo "$who: installing ${missing[*]}"
  (
    # policy-rc.d 101 = "action forbidden": invoke-rc.d then starts nothing during the install.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      trap 'rm -f "$policy"' EXIT
      printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # `set -e` does not apply inside ( ... ) || ..., so the steps are chained explicitly.
    { apt-get update -qq || apt-get update; } &&
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ) || { echo "$who: could not install ${missing[*]} with apt-get" >&2; return 1; }
  echo "$who: done"
}

# require_go WHO: a Go of at least GO_MINIMUM before anything is built from the Go module proxy
# (etcd, Kubernetes, Kueue, kwok): the one on PATH, else /usr/local/go's (added to PATH), else, as
# root where Debian's golang-go is new enough (Debian 13), installed with apt-get. Otherwise one
# line names what is missing and nothing is built (Debian 12's golang-go is 1.19).
GO_MINIMUM=1.24
go_new_enough() {
  local v
  v=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  [ "$(printf '%s\n%s\n' "$GO_MINIMUM" "$v" | sort -V | head -1)" = "$GO_MINIMUM" ]
}
require_go() {
  local who=$1 found debian
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH=$PATH:/usr/local/go/bin; fi
  go_new_enough && return 0
  debian=$(apt-cache show --no-all-versions golang-go 2>/dev/null | awk '/^Version:/ {print $2; exit}')
  debian=${debian#*:}; debian=${debian%%[~+-]*}
  if [ "$(id -u)" = 0 ] && [ -n "$debian" ] &&
     [ "$(printf '%s\n%s\n' "$GO_MINIMUM" "$debian" | sort -V | head -1)" = "$GO_MINIMUM" ]; then
    install_packages "$who" golang-go && go_new_enough && return 0
  fi
  found=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || echo "no go on PATH")
  echo "$who: Go $GO_MINIMUM or newer is needed to build the stack's binaries (found: $found); install it from https://go.dev/dl/ into /usr/local/go and run again" >&2
  return 1
}

# mounts_under DIR: mount points at or below DIR. unmount_under WHO DIR: unmount them, deepest
# first; fails, naming WHO, if one stays (then nothing below DIR may be deleted: it could be the
# host's /dev or /proc).
mounts_under() { awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo; }
unmount_under() {
  local who=$1 dir=$2 m
  for m in $(mounts_under "$dir" | sort -r); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  [ -z "$(mounts_under "$dir")" ] || { echo "$who: still mounted under $dir: $(mounts_under "$dir" | xargs)" >&2; return 1; }
}

# rooted_in DIR: PIDs of the processes whose root directory is DIR or below it.
rooted_in() {
  local p
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/root" 2>/dev/null)" in "$1" | "$1"/*) echo "${p#/proc/}" ;; esac
  done
}
