#!/usr/bin/env bash
# Build the dispatcher's container image from the unchanged Dockerfile without a Docker engine or
# a registry: make the base image locally (build-base-image.sh), `podman build` the Dockerfile,
# save the image as an OCI archive in .local/images/ and, when the local stack's containerd is
# running, import it there so the kubelet runs it with imagePullPolicy IfNotPresent or Never.
#
# Then check the result: the image config (user 10001:10001, entrypoint, command, port), its files
# (no compiler, no pip, no apt lists) and, through containerd when the stack runs, `dispatcher
# --help` and `dispatcher config` in a throw-away container on a read-only root filesystem.
# (`podman run` cannot run containers on this VM: it raises rlimits, which needs CAP_SYS_RESOURCE.)
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
t0=$SECONDS
die() { echo "build-image: $*" >&2; exit 1; }

bash "$STACK_DIR/build-base-image.sh" || die "could not make the base image (see above)"

VERSION=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$REPO_DIR/pyproject.toml") || die "could not read the version from pyproject.toml"
IMAGE=localhost/k8s-job-dispatcher:$VERSION
ARCHIVE=$LOCAL/images/k8s-job-dispatcher-$VERSION.oci.tar
REVISION=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || echo unknown)
mkdir -p "$LOCAL/images"
exec 9>"$LOCAL/images/.build.lock"; flock 9   # one build per checkout at a time

# A TLS-inspecting proxy between this machine and PyPI (as on this VM type) signs with a CA that
# only the host trusts, from /usr/local/share/ca-certificates/. Mounted there during the RUN steps,
# the builder's update-ca-certificates adds it; the Dockerfile stays unchanged and the final image
# gets none of it (it installs no CA store and downloads nothing over TLS).
build_opts=()
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  build_opts+=(--volume /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro)
fi

old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
echo "build-image: podman build --isolation=chroot -t $IMAGE $REPO_DIR"
t_build=$SECONDS
podman build --isolation=chroot --layers --pull=missing "${build_opts[@]}" \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
  -t "$IMAGE" -f "$REPO_DIR/Dockerfile" "$REPO_DIR" || die "podman build of $REPO_DIR/Dockerfile failed (see above)"
build_s=$((SECONDS - t_build))
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
# The previous build of this tag is now untagged: drop it (its layers stay while still shared).
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi

failures=()
expect() {  # expect WHAT ACTUAL WANTED
  [ "$2" = "$3" ] || failures+=("$1 is '$2', expected '$3'")
}
check_passed() {  # check_passed WHERE: report the failures collected so far, if any
  [ ${#failures[@]} -eq 0 ] && return 0
  printf 'build-image: check failed: %s\n' "${failures[@]}" >&2
  die "$IMAGE failed its checks $1"
}

# --- the image config and its files, without running anything ---------------------------------
config=$(podman image inspect --format \
  '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$IMAGE")
IFS='|' read -r user entrypoint cmd ports <<<"$config"
expect "user" "$user" "10001:10001"
expect "entrypoint" "$entrypoint" '["/opt/venv/bin/dispatcher"]'
expect "command" "$cmd" '["worker"]'
expect "exposed ports" "${ports% }" "8000/tcp"

root=$(podman image mount "$IMAGE") || die "podman image mount $IMAGE failed"
found() { (cd "$root" && compgen -G "$1" | head -n 1) || true; }
for pattern in 'usr/bin/gcc*' 'usr/bin/cc' 'usr/bin/c++' 'usr/bin/*-linux-gnu-gcc*' 'usr/bin/pip*' \
               'opt/venv/bin/pip*' 'opt/venv/lib/python3*/site-packages/pip' 'usr/lib/python3/dist-packages/pip'; do
  hit=$(found "$pattern"); [ -z "$hit" ] || failures+=("the image contains /$hit")
done
lists=$(find "$root/var/lib/apt/lists" "$root/var/cache/apt" -type f 2>/dev/null | wc -l)
expect "files under /var/lib/apt/lists and /var/cache/apt" "$lists" 0
[ -x "$root/opt/venv/bin/dispatcher" ] || failures+=("/opt/venv/bin/dispatcher is missing")
podman image unmount "$IMAGE" >/dev/null
check_passed "(it was not saved or imported into containerd)"

podman save --quiet --format oci-archive -o "$ARCHIVE.tmp" "$IMAGE" || die "podman save $IMAGE failed"
mv "$ARCHIVE.tmp" "$ARCHIVE"

# --- into the local stack's containerd, and run it there ---------------------------------------
imported=no
if [ -S "$SOCK" ]; then
  $CTR images import --platform linux/amd64 "$ARCHIVE" >/dev/null || die "import of $ARCHIVE into containerd ($SOCK) failed"
  $CTR images ls -q | grep -qxF "$IMAGE" || die "containerd does not list $IMAGE after the import"
  imported=yes
  cid=dispatcher-image-check-$$
  # Normally --rm has removed it; this is for an interrupted or timed-out run.
  trap '$CTR tasks kill -s KILL "$cid" >/dev/null 2>&1 || true; $CTR containers rm "$cid" >/dev/null 2>&1 || true' EXIT
  in_image() {  # in_image CMD...: run CMD in a throw-away container as the image's user, read-only root
    timeout 60 $CTR run --rm --read-only "$IMAGE" "$cid" "$@" 2>&1
  }
  out=$(in_image /opt/venv/bin/dispatcher --help) || failures+=("dispatcher --help failed in the image: $out")
  out=$(in_image /bin/sh -c 'echo "uid=$(id -u) gid=$(id -g)" && exec /opt/venv/bin/dispatcher config') ||
    failures+=("dispatcher config failed in the image: $out")
  ids=$(head -n 1 <<<"$out")
  expect "the process identity" "$ids" "uid=10001 gid=10001"
  out=$(in_image /opt/venv/bin/python -c 'import dispatcher.worker.app, dispatcher.kube.client') ||
    failures+=("the worker modules do not import in the image: $out")
fi

check_passed "in containerd (it is imported there; fix and run again)"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image: built $IMAGE (${new_id:0:12}): $((size / 1000000)) MB, archive $(du -m "$ARCHIVE" | cut -f1) MB at $ARCHIVE"
if [ $imported = yes ]; then
  echo "build-image: imported into containerd at $SOCK; checked --help, config as uid 10001 on a read-only root"
else
  echo "build-image: the local stack is not running ($SOCK): not imported into containerd, not run"
fi
echo "build-image: podman build ${build_s} s, total $((SECONDS - t0)) s"
