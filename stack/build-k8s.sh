#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl from the Go
# module proxy into $STACK_CACHE/k8s-$K8S_VERSION/bin. A no-op once the .complete stamp exists.
# K8S_VERSION from the environment builds another version than the pinned one (make compat).
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every staging module with a
# local path), so a throw-away wrapper module replaces each staging module by its published
# v0.X.Y tag and builds the commands as dependencies.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WANTED=${K8S_VERSION:-}
. "$HERE/versions.env"
K8S=${WANTED:-$K8S_VERSION}
case "$K8S" in
  v1.[0-9]*.[0-9]*) ;;
  *) echo "build-k8s: K8S_VERSION must look like v1.37.2, not '$K8S'" >&2; exit 2 ;;
esac
STACK_CACHE=${STACK_CACHE:-/var/cache/dispatcher-stack}
OUT=$STACK_CACHE/k8s-$K8S
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time
STAGING=v0.${K8S#v1.}
MINOR=$(echo "$K8S" | cut -d. -f2)
CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
if [ -f "$OUT/.complete" ]; then echo "kubernetes $K8S: cached in $OUT"; exit 0; fi

start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
W=$OUT/src
rm -rf "$W" "$OUT/bin"; mkdir -p "$W" "$OUT/bin"; cd "$W"
go mod init local/k8s-binaries >/dev/null 2>&1
go mod edit -go=1.24.0

# Staging modules straight from upstream's go.mod (its "=> ./staging/src/..." replace lines).
GOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
MODS=$(awk '$2=="=>" && $3 ~ /^\.\/staging\/src\// {print $1}' "$GOMOD")
[ -n "$MODS" ] || { echo "build-k8s: could not read the staging module list from $GOMOD" >&2; exit 1; }
for m in $MODS; do go mod edit -replace="$m=$m@$STAGING"; done

go get -tool $(for c in $CMDS; do printf 'k8s.io/kubernetes/cmd/%s@%s ' "$c" "$K8S"; done)

LD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LD="$LD -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean"
done
echo "build-k8s: compiling $CMDS (a cold build takes about 5 minutes on 2 cores)"
go build -p 2 -trimpath -ldflags "$LD" -o "$OUT/bin/" $(for c in $CMDS; do printf 'k8s.io/kubernetes/cmd/%s ' "$c"; done)
"$OUT/bin/kube-apiserver" --version
touch "$OUT/.complete"
echo "build-k8s: built kubernetes $K8S in $((SECONDS - start)) s"
