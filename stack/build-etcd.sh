#!/usr/bin/env bash
# Build etcd from the Go module proxy into $STACK_CACHE/etcd-$ETCD_VERSION/bin/etcd (cached).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
STACK_CACHE=${STACK_CACHE:-/var/cache/dispatcher-stack}
OUT=$STACK_CACHE/etcd-$ETCD_VERSION
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time
if [ -x "$OUT/bin/etcd" ]; then echo "etcd $ETCD_VERSION: cached in $OUT"; exit 0; fi
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
rm -rf "$OUT"; mkdir -p "$OUT/src" "$OUT/bin"; cd "$OUT/src"
go mod init local/etcd-binary >/dev/null 2>&1
go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
go build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$OUT/bin/etcd.tmp" "$OUT/bin/etcd"
"$OUT/bin/etcd" --version | head -1
echo "build-etcd: built etcd $ETCD_VERSION in $((SECONDS - start)) s"
