#!/usr/bin/env bash
# Build Helm (helm.sh/helm/v4/cmd/helm) from the Go module proxy into
# $STACK_CACHE/helm-$HELM_VERSION/bin/helm (cached by version; about 2 minutes on 2 cores). The
# chart in charts/ is linted, packaged and tested with it; stack/helm.sh runs it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
STACK_CACHE=${STACK_CACHE:-/var/cache/dispatcher-stack}
OUT=$STACK_CACHE/helm-$HELM_VERSION
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time
if [ -x "$OUT/bin/helm" ]; then echo "helm $HELM_VERSION: cached in $OUT"; exit 0; fi
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
rm -rf "$OUT"; mkdir -p "$OUT/bin"
# The version stamp `make` gives Helm's release builds (`helm version` prints it).
stamp="-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.metadata="
GOBIN="$OUT/bin.tmp" go install -trimpath -ldflags "-s -w $stamp" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
mv "$OUT/bin.tmp/helm" "$OUT/bin/helm"; rmdir "$OUT/bin.tmp"
echo "build-helm: built helm $HELM_VERSION in $((SECONDS - start)) s"
