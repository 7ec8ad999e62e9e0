#!/usr/bin/env bash
# Build the broker's root filesystem: `debootstrap --variant=minbase --include=rabbitmq-server` of
# Debian $RABBITMQ_SUITE into $STACK_CACHE/rabbitmq-$RABBITMQ_VERSION (cached by version; a cold
# build takes a few minutes, mostly downloads). The stack runs RabbitMQ and its epmd chrooted into
# this root (stack/rabbitmq-chroot.sh): nothing of RabbitMQ or Erlang is installed on the host.
#
# The root is built in a temporary directory next to the cache entry and renamed into place only
# once it is complete and holds the pinned rabbitmq-server version, so an interrupted build leaves
# no half root behind. No service starts inside it during the install: debootstrap configures the
# packages with a policy-rc.d that forbids every service action and a start-stop-daemon that does
# nothing, and the build fails if a process still runs inside the new root afterwards.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
MIRROR=http://deb.debian.org/debian
OUT=$RABBITMQ_ROOT

# upstream_version ROOT: rabbitmq-server's version in ROOT's dpkg database, without the epoch and
# the Debian revision (4.0.5-6+deb13u2 -> 4.0.5); empty if it is not installed there.
upstream_version() {
  local v
  v=$(dpkg-query --admindir="$1/var/lib/dpkg" -W -f='${db:Status-Abbrev} ${Version}' rabbitmq-server 2>/dev/null) || return 0
  case "$v" in ii*) v=${v##* }; v=${v#*:}; echo "${v%-*}" ;; esac
}

install_packages build-rabbitmq debootstrap
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time

if [ -d "$OUT" ]; then
  have=$(upstream_version "$OUT")
  if [ "$have" = "$RABBITMQ_VERSION" ] && [ -x "$OUT/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
    echo "rabbitmq $RABBITMQ_VERSION: cached in $OUT"; exit 0
  fi
  echo "build-rabbitmq: $OUT holds rabbitmq-server '${have:-none}', not $RABBITMQ_VERSION: remove it to rebuild" >&2
  exit 1
fi

start=$SECONDS
echo "build-rabbitmq: debootstrap --variant=minbase --include=rabbitmq-server $RABBITMQ_SUITE $MIRROR (a few minutes)"
work=$(mktemp -d "$STACK_CACHE/rabbitmq-work.XXXXXX")
trap 'unmount_under build-rabbitmq "$work" && rm -rf --one-file-system "$work"' EXIT
if ! debootstrap --variant=minbase --include=rabbitmq-server "$RABBITMQ_SUITE" "$work/root" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1; then
  echo "build-rabbitmq: debootstrap failed; last lines of its log:" >&2
  tail -n 20 "$work/debootstrap.log" >&2
  tail -n 20 "$work/root/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
  exit 1
fi
unmount_under build-rabbitmq "$work"
running=$(rooted_in "$work/root" | xargs)
if [ -n "$running" ]; then
  # Started by this build's package scripts despite policy-rc.d: stop them (by PID) and fail.
  for pid in $running; do kill -KILL "$pid" 2>/dev/null || true; done
  echo "build-rabbitmq: processes were started inside the new root during the install (PIDs $running)" >&2
  exit 1
fi
have=$(upstream_version "$work/root")
if [ "$have" != "$RABBITMQ_VERSION" ]; then
  echo "build-rabbitmq: Debian $RABBITMQ_SUITE has rabbitmq-server '${have:-none}', not the pinned $RABBITMQ_VERSION (stack/versions.env)" >&2
  exit 1
fi
# Downloaded packages are not needed any more (about a third of the size).
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
mv -T "$work/root" "$OUT"
echo "build-rabbitmq: built rabbitmq-server $have ($RABBITMQ_SUITE) in $OUT ($(du -sm "$OUT" | cut -f1) MB) in $((SECONDS - start)) s"
