#!/usr/bin/env bash
# broker-node.sh stop|start|restart N: stop broker node N (rabbitmqctl stop, then its recorded
# PID), start it again from the stack's root with its data as it was, or both. For fault tests on
# a running stack (a rolling restart of a BROKER_NODES=3 cluster); `make up` starts every node.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
[ $# -eq 2 ] || { echo "usage: broker-node.sh stop|start|restart N" >&2; exit 2; }
action=$1 n=$2
nodes=$(broker_nodes)
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$nodes" ] ||
  { echo "broker-node: the stack has $nodes broker node(s), not '$n'" >&2; exit 2; }
rabbitmq_node "$n"

stop_node() {
  timeout 30 "$STACK_DIR/rabbitmqctl.sh" "$n" -q stop >/dev/null 2>&1 || true
  stop_component "$RMQ_NAME"
}

start_node() {
  component_alive "$RMQ_NAME" && { echo "broker-node: $RMQ_NAME is running" >&2; exit 1; }
  start_broker_node "$n"
}

case "$action" in
  stop) stop_node ;;
  start) start_node ;;
  restart) stop_node; start_node ;;
  *) echo "usage: broker-node.sh stop|start|restart N" >&2; exit 2 ;;
esac
echo "broker-node: $RMQ_NAME ${action/%p/pp}ed"
