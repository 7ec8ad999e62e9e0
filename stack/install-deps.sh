#!/usr/bin/env bash
# Install the Debian packages the local stack needs, without letting their maintainer scripts
# start any service (the stack's own scripts start and stop everything by PID). RabbitMQ is not
# among them: it runs from a Debian trixie root that build-rabbitmq.sh makes with debootstrap (a
# rabbitmq-server installed on the host is left alone and not used).
#
# prometheus brings promtool, which the alert rules' tests run, and the server, which the
# monitoring test starts as a process of its own (a loopback port, a temporary data directory,
# stopped by its PID). Its service is not the stack's: when this script installs the package it
# also keeps the service from starting at boot (an installation made before is left as it was).
#
# chromium is the headless browser the status page's test drives (through the PyPI package
# playwright, never a browser build of its own).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
had_prometheus=$(dpkg-query -W -f='${Status}' prometheus 2>/dev/null || true)
install_packages install-deps containerd runc containernetworking-plugins debootstrap \
  busybox-static gcc libc6-dev openssl curl iproute2 procps ca-certificates python3-venv prometheus \
  chromium
if [ "$had_prometheus" != "install ok installed" ]; then
  update-rc.d prometheus disable >/dev/null  # its init script, and its systemd unit when present
fi
