#!/usr/bin/env bash
# Build the local stack's OCI image tarballs (cached by IMAGES_VERSION): the pod sandbox image
# and a shell image with busybox applets for tests and the demo. Nothing is pulled.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
if [ -f "$IMAGES/.complete" ]; then echo "images: cached in $IMAGES"; exit 0; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
rm -rf "$IMAGES"; mkdir -p "$IMAGES"

mkdir -p "$work/pause"
gcc -Os -static -s -o "$work/pause/pause" "$STACK_DIR/pause.c"
python3 "$STACK_DIR/mkoci.py" "$PAUSE_IMAGE" "$work/pause" "$IMAGES/pause.tar" --entrypoint /pause

box=$work/testbox
mkdir -p "$box/bin" "$box/tmp" "$box/etc" "$box/data"
chmod 1777 "$box/tmp"
cp /bin/busybox "$box/bin/busybox"
for applet in $("$box/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$box/bin/$applet"   # relative: valid inside the image
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$box/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$box/etc/group"
python3 "$STACK_DIR/mkoci.py" "$TEST_IMAGE" "$box" "$IMAGES/testbox.tar" --cmd /bin/sh
touch "$IMAGES/.complete"
echo "images: built $PAUSE_IMAGE and $TEST_IMAGE in $IMAGES"
