#!/usr/bin/env bash
# Install the Debian packages the local stack needs, without letting their maintainer scripts
# start any service (the stack's own scripts start and stop everything by PID).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
install_packages install-deps containerd runc containernetworking-plugins rabbitmq-server \
  busybox-static gcc libc6-dev openssl curl iproute2 procps ca-certificates
