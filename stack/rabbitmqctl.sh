#!/usr/bin/env bash
# rabbitmqctl.sh NODE ARGS...: the RabbitMQ root's rabbitmqctl against the stack's broker node NODE
# (1 to BROKER_NODES: with a single node only 1), with that node's cookie, HOME and environment.
# RABBITMQ_TOOL=rabbitmq-queues (or rabbitmq-diagnostics, rabbitmq-plugins, rabbitmq-upgrade,
# rabbitmq-streams) runs that CLI instead. File arguments must lie under /tmp (the host's /tmp is
# the CLI's /tmp).
#   stack/rabbitmqctl.sh 1 list_queues name type
#   RABBITMQ_TOOL=rabbitmq-queues stack/rabbitmqctl.sh 2 quorum_status tasks
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
nodes=$(broker_nodes)
n=${1:-}
case "$n" in
  [1-9]) [ "$n" -le "$nodes" ] || { echo "rabbitmqctl.sh: node $n does not exist: the stack has $nodes broker node(s)" >&2; exit 2; } ;;
  *) echo "usage: stack/rabbitmqctl.sh NODE ARGS... (NODE 1 to $nodes)" >&2; exit 2 ;;
esac
shift
tool=${RABBITMQ_TOOL:-rabbitmqctl}
case "$tool" in
  rabbitmqctl | rabbitmq-queues | rabbitmq-diagnostics | rabbitmq-plugins | rabbitmq-upgrade | rabbitmq-streams) ;;
  *) echo "rabbitmqctl.sh: RABBITMQ_TOOL must name a RabbitMQ CLI, not '$tool'" >&2; exit 2 ;;
esac
exec "$STACK_DIR/rabbitmq-chroot.sh" cli "$n" "/usr/lib/rabbitmq/bin/$tool" "$@"
