#!/usr/bin/env bash
# Build kwok (sigs.k8s.io/kwok, simulated nodes) from the Go module proxy into
# $STACK_CACHE/kwok-$KWOK_VERSION/bin/kwok (cached), with its stage files beside it. Scale mode
# only: the normal stack and `make test` never need it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
STACK_CACHE=${STACK_CACHE:-/var/cache/dispatcher-stack}
OUT=$STACK_CACHE/kwok-$KWOK_VERSION
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time
if [ -x "$OUT/bin/kwok" ]; then echo "kwok $KWOK_VERSION: cached in $OUT"; exit 0; fi
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
rm -rf "$OUT"; mkdir -p "$OUT/bin"
GOBIN="$OUT/bin.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# The stage files ship in the module; keep the ones scale mode uses next to the binary.
SRC=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION
cp -r "$SRC/kustomize/stage" "$OUT/stage"; chmod -R u+w "$OUT/stage"
mv "$OUT/bin.tmp/kwok" "$OUT/bin/kwok"; rmdir "$OUT/bin.tmp"
"$OUT/bin/kwok" --version 2>/dev/null | head -1 || true
echo "build-kwok: built kwok $KWOK_VERSION in $((SECONDS - start)) s"
