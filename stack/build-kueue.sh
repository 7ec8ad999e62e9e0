#!/usr/bin/env bash
# Build Kueue's manager (sigs.k8s.io/kueue/cmd/kueue) from the Go module proxy into
# $STACK_CACHE/kueue-$KUEUE_VERSION/bin/kueue (cached; about 3.5 minutes on 2 cores), with the
# CRDs and webhook manifests of the same version beside it. Kueue mode only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
STACK_CACHE=${STACK_CACHE:-/var/cache/dispatcher-stack}
OUT=$STACK_CACHE/kueue-$KUEUE_VERSION
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time
if [ -x "$OUT/bin/kueue" ]; then echo "kueue $KUEUE_VERSION: cached in $OUT"; exit 0; fi
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
rm -rf "$OUT"; mkdir -p "$OUT/bin"
GOBIN="$OUT/bin.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
# The CRDs and the webhook configurations ship in the module; keep those of this version.
SRC=$(go env GOMODCACHE)/sigs.k8s.io/kueue@$KUEUE_VERSION
cp -r "$SRC/config/components/crd/bases" "$OUT/crd"
cp "$SRC/config/components/webhook/manifests.yaml" "$OUT/webhooks.yaml"
chmod -R u+w "$OUT/crd" "$OUT/webhooks.yaml"
mv "$OUT/bin.tmp/kueue" "$OUT/bin/kueue"; rmdir "$OUT/bin.tmp"
echo "build-kueue: built kueue $KUEUE_VERSION in $((SECONDS - start)) s"
