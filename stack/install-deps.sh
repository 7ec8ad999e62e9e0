#!/usr/bin/env bash
# Install the Debian packages the local stack needs, without letting their maintainer scripts
# start any service (the stack's own scripts start and stop everything by PID). RabbitMQ is not
# among them: it runs from a Debian trixie root that build-rabbitmq.sh makes with debootstrap (a
# rabbitmq-server installed on the host is left alone and not used).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
install_packages install-deps containerd runc containernetworking-plugins debootstrap \
  busybox-static gcc libc6-dev openssl curl iproute2 procps ca-certificates python3-venv
