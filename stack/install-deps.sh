#!/usr/bin/env bash
# Install the Debian packages the local stack needs, without letting their maintainer scripts
# start any service (the stack's own scripts start and stop everything by PID).
set -euo pipefail
PKGS=(containerd runc containernetworking-plugins rabbitmq-server busybox-static
      gcc libc6-dev openssl curl iproute2 procps ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "install-deps: all packages present"; exit 0; fi
echo "install-deps: installing ${missing[*]}"
# policy-rc.d 101 = "action forbidden": invoke-rc.d then starts nothing during the install.
policy=/usr/sbin/policy-rc.d
had_policy=0; [ -e "$policy" ] && had_policy=1
if [ $had_policy -eq 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; fi
trap '[ $had_policy -eq 1 ] || rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || apt-get update
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
