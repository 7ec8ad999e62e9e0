#!/usr/bin/env bash
# rabbitmq-chroot.sh server|cli N PROGRAM [ARG...]: run PROGRAM (a path inside the RabbitMQ root)
# as broker node N sees the world: in a private mount namespace of its own, with node N's
# directories bind-mounted into $RABBITMQ_ROOT, chrooted into it, with node N's environment.
#
#   /var/lib/rabbitmq  <- $STACK_STATE/rabbitmq[-N]   HOME (.erlang.cookie), mnesia, beam.pid
#   /etc/rabbitmq      <- .local/config/rabbitmq[-N]  rabbitmq.conf, enabled_plugins
#   /etc/rabbitmq/pki  <- .local/pki (read-only)      the stack's CA and the broker's certificate
#   /var/log/rabbitmq  <- .local/logs/rabbitmq[-N]
#   /proc              a proc of its own (memory and disk monitors read it)
#   /tmp               server: an empty tmpfs; cli: the host's /tmp (files the CLI is given)
#
# The mounts exist only in that namespace: they vanish with its last process, so stopping the
# process group (stop_component) leaves nothing mounted, and the cached root is never changed.
# Every step execs the next one, so the PID start_component records ends as the node's beam.smp.
# Nothing else runs in the namespace: the mounts vanish when the node (or CLI) exits.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
if [ "${DISPATCHER_RMQ_NS:-}" != "$$" ]; then
  DISPATCHER_RMQ_NS=$$ exec unshare --mount --propagation private -- "$0" "$@"
fi
unset DISPATCHER_RMQ_NS
mode=$1 n=$2; shift 2
rabbitmq_node "$n"
R=$RABBITMQ_ROOT
[ -x "$R/usr/lib/rabbitmq/bin/rabbitmq-server" ] || { echo "rabbitmq: no RabbitMQ root at $R: run stack/build-rabbitmq.sh" >&2; exit 1; }
[ -d "$RMQ_DATA" ] && [ -f "$RMQ_CONF/rabbitmq.conf" ] || { echo "rabbitmq: node $n ($RMQ_NODENAME) is not set up: run make up" >&2; exit 1; }
mount --bind "$RMQ_DATA" "$R/var/lib/rabbitmq"
mount --bind "$RMQ_CONF" "$R/etc/rabbitmq"
mount --bind -o ro "$PKI" "$R/etc/rabbitmq/pki"
mount --bind "$RMQ_LOGS" "$R/var/log/rabbitmq"
mount -t proc proc "$R/proc"
# server: RUNNING_UNDER_SYSTEMD=true makes rabbitmq-server exec the Erlang VM instead of running
# it as a child and waiting (its only effect), so the recorded PID is the node's beam.smp itself
# (a test's SIGKILL or SIGSTOP of that PID hits the broker) and SIGTERM stops it cleanly.
extra=()
case "$mode" in
  server) mount -t tmpfs -o mode=1777,size=64m tmpfs "$R/tmp"; extra=(RUNNING_UNDER_SYSTEMD=true) ;;
  cli) mount --bind /tmp "$R/tmp" ;;
  *) echo "usage: rabbitmq-chroot.sh server|cli N PROGRAM [ARG...]" >&2; exit 2 ;;
esac
exec chroot "$R" /usr/bin/env -i \
  PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM="${TERM:-dumb}" HOME=/var/lib/rabbitmq \
  RABBITMQ_NODENAME="$RMQ_NODENAME" \
  RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq/mnesia \
  RABBITMQ_LOG_BASE=/var/log/rabbitmq \
  RABBITMQ_CONFIG_FILE=/etc/rabbitmq/rabbitmq.conf \
  RABBITMQ_ENABLED_PLUGINS_FILE=/etc/rabbitmq/enabled_plugins \
  RABBITMQ_PID_FILE=/var/lib/rabbitmq/beam.pid \
  RABBITMQ_DIST_PORT="$RMQ_DIST_PORT" \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
  RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
  ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
  "${extra[@]}" "$@"
