#!/usr/bin/env bash
# helm ARGS...: the pinned Helm ($HELM_VERSION of versions.env), built on first use by
# build-helm.sh. With the local stack up, its kubeconfig is the default.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
HELM=${STACK_CACHE:-/var/cache/dispatcher-stack}/helm-$HELM_VERSION/bin/helm
[ -x "$HELM" ] || bash "$HERE/build-helm.sh" >&2
if [ -z "${KUBECONFIG:-}" ] && [ -f "$HERE/../.local/kubeconfig" ]; then export KUBECONFIG=$HERE/../.local/kubeconfig; fi
exec "$HELM" "$@"
