#!/usr/bin/env bash
# Tear the local stack down: pods and containers, every component (by recorded PID), mounts,
# cgroups, the pod bridge, and the kernel settings the kubelet changed. Safe to run twice, and
# before `up` to clear a crashed run (also one started from another checkout).
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
quiet=0; [ "${1:-}" = --quiet ] && quiet=1
say() { [ $quiet -eq 1 ] || echo "$@"; }

stop_component kubelet
if [ -S "$SOCK" ]; then
  for id in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1; done
  for _ in $(seq 20); do [ -z "$($CTR tasks ls -q 2>/dev/null | head -c1)" ] && break; sleep 0.25; done
  for id in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks delete -f "$id" >/dev/null 2>&1; done
  for id in $($CTR containers ls -q 2>/dev/null); do $CTR containers delete "$id" >/dev/null 2>&1; done
fi
stop_component containerd
# runc shims outlive containerd by design; ours are the ones serving our socket.
for p in /proc/[0-9]*; do
  if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q -- "containerd-shim.*-address $SOCK"; then
    kill -KILL "${p#/proc/}" 2>/dev/null
  fi
done
for c in kueue kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
forget_metrics_cert
# Broker nodes, last first (node 1 last): `rabbitmqctl stop`, then their process group by PID,
# which ends their mount namespace and so their mounts in the RabbitMQ root.
nodes=$(broker_nodes)
for f in "$STACK_RUN"/pids/rabbitmq-[0-9]*.pid; do   # also nodes of a run with more nodes
  [ -f "$f" ] || continue; n=${f##*/rabbitmq-}; n=${n%.pid}; [ "$n" -le "$nodes" ] || nodes=$n
done
[ ! -d "$STACK_RUN" ] || echo "$nodes" > "$STACK_RUN/broker-nodes"   # for rabbitmqctl.sh
for n in $(seq "$nodes" -1 1); do
  rabbitmq_node "$n"
  if component_alive "$RMQ_NAME"; then
    timeout 20 "$STACK_DIR/rabbitmqctl.sh" "$n" -q stop >/dev/null 2>&1
  fi
  stop_component "$RMQ_NAME"
done
stop_component epmd
# The VM's helpers (erl_child_setup, inet_gethost, the disk monitor's shell) run in sessions of
# their own and exit once their node is gone; any still there after 5 s are killed by PID.
for _ in $(seq 50); do [ -z "$(rooted_in "$RABBITMQ_ROOT")" ] && break; sleep 0.1; done
for pid in $(rooted_in "$RABBITMQ_ROOT"); do kill -KILL "$pid" 2>/dev/null; done

# Mounts (pod netns, overlay rootfs, shm, projected volumes), deepest first.
awk '{print $5}' /proc/self/mountinfo | grep -E "^($STACK_STATE|$STACK_RUN)(/|$)" | sort -r |
  while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
for h in /sys/fs/cgroup/*/; do
  [ -d "${h}kubepods" ] && find "${h}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
done
ip link del "$BRIDGE" 2>/dev/null
if [ -f "$STACK_RUN/sysctl.saved" ]; then
  while IFS='=' read -r k v; do sysctl -qw "$k=$v" 2>/dev/null; done < "$STACK_RUN/sysctl.saved"
fi
rm -rf "$STACK_STATE" "$STACK_RUN" "$ETCD_DATA" /var/log/pods /var/log/containers

left=0
grep -qE " ($STACK_STATE|$STACK_RUN)[/ ]" /proc/self/mountinfo && { echo "down: WARNING mounts left" >&2; left=1; }
ls -d /sys/fs/cgroup/*/kubepods >/dev/null 2>&1 && { echo "down: WARNING cgroups left" >&2; left=1; }
ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "down: WARNING bridge $BRIDGE left" >&2; left=1; }
sleep 0.2
for pid in $(rooted_in "$RABBITMQ_ROOT"); do echo "down: WARNING process $pid left in $RABBITMQ_ROOT" >&2; left=1; done
say "down: stack stopped"
exit $left
