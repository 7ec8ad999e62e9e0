#!/usr/bin/env bash
# Make the Dockerfile's base image locally, because nothing can be pulled here: debootstrap a
# minimal Debian bookworm, add its security updates, trim it the way Debian's official "slim"
# images are trimmed, and import it into podman's storage under exactly the Dockerfile's default
# BASE_IMAGE name, so `podman build` of the unchanged Dockerfile finds it locally.
#
# The root filesystem tarball is cached in $STACK_CACHE/base-image-$BASE_IMAGE_VERSION: later runs
# only re-import it (a few seconds), and a run that finds that import still in podman does nothing.
# Bump BASE_IMAGE_VERSION in versions.env to rebuild it (for example to take new security updates).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
OUT=$STACK_CACHE/base-image-$BASE_IMAGE_VERSION
ROOTFS_TAR=$OUT/rootfs.tar

BASE_IMAGE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO_DIR/Dockerfile" | head -n 1)
[ -n "$BASE_IMAGE" ] || { echo "build-base-image: no 'ARG BASE_IMAGE=' default in $REPO_DIR/Dockerfile" >&2; exit 1; }

install_packages build-base-image debootstrap podman buildah
mkdir -p "$STACK_CACHE"
exec 9>"$OUT.lock"; flock 9   # one build per version at a time

imported_id() { podman image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true; }
if [ -f "$OUT/image-id" ] && [ "$(imported_id)" = "$(cat "$OUT/image-id")" ]; then
  echo "build-base-image: $BASE_IMAGE is current (base version $BASE_IMAGE_VERSION)"; exit 0
fi

# The sources, apt and dpkg settings of Debian's official images (debuerreotype): bookworm with its
# updates and security suites, no recommends or caches kept, and the slim image's dpkg filter so
# packages installed on top of it do not bring their documentation back either.
configure_rootfs() {
  local root=$1
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOT
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
  printf '#!/bin/sh\n# Services do not start during image builds.\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<EOT
DPkg::Post-Invoke { $clean };
APT::Update::Post-Invoke { $clean };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOT
  echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'Acquire::GzipIndexes "true";' > "$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOT'
# This is the "slim" variant of the Debian base image: files that containers do not need are
# excluded, and this configuration keeps them that way.
path-exclude /usr/share/doc/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-include /usr/share/doc/*/copyright
path-include /usr/share/locale/locale.alias
EOT
}

# apt-get upgrade inside the new root filesystem: debootstrap installs the point release only.
upgrade_rootfs() {
  local root=$1 log=$2 rc=0
  mount -t proc proc "$root/proc"
  { chroot "$root" apt-get update &&
      DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -o Dpkg::Use-Pty=0 upgrade; } >"$log" 2>&1 || rc=$?
  umount "$root/proc"
  [ $rc -eq 0 ] || { echo "build-base-image: apt-get upgrade in the new root filesystem failed:" >&2; tail -n 20 "$log" >&2; }
  return $rc
}

# Remove what the slim filter excludes (keeping the copyright files), plus caches, logs and
# anything describing the build machine.
trim_rootfs() {
  local root=$1
  local keep=("$root/usr/share/doc" "$root/usr/share/locale")
  find "${keep[@]}" -mindepth 1 -not -name copyright -not -name locale.alias -not -type d -not -type l -delete
  find "${keep[@]}" -mindepth 1 -xtype l -delete                      # links that now point nowhere
  find "${keep[@]}" -mindepth 1 -depth -type d -empty -delete
  rm -rf "$root"/usr/share/{groff,info,linda,man}/* "$root"/usr/share/lintian/overrides/*
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/cache/ldconfig/aux-cache "$root"/var/log/*.log "$root"/var/log/apt/* \
    "$root"/etc/apt/apt.conf.d/01autoremove-kernels "$root"/run/mount/utab \
    "$root"/dev/* "$root"/proc/* "$root"/sys/* "$root"/tmp/* "$root"/var/tmp/*
  : > "$root/etc/resolv.conf"; : > "$root/etc/hostname"   # the runtime provides both
  chmod 0644 "$root/etc/resolv.conf" "$root/etc/hostname"
}

if [ ! -f "$ROOTFS_TAR" ]; then
  start=$SECONDS
  echo "build-base-image: debootstrap --variant=minbase $SUITE $MIRROR (about 30 s)"
  rm -rf "$OUT"; mkdir -p "$OUT"
  work=$(mktemp -d "$STACK_CACHE/base-image-work.XXXXXX")
  trap 'unmount_under build-base-image "$work" && rm -rf --one-file-system "$work"' EXIT
  if ! debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    echo "build-base-image: debootstrap failed; last lines of its log:" >&2
    tail -n 20 "$work/debootstrap.log" >&2
    tail -n 20 "$work/rootfs/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
    exit 1
  fi
  configure_rootfs "$work/rootfs"
  upgrade_rootfs "$work/rootfs" "$work/upgrade.log"
  unmount_under build-base-image "$work"
  trim_rootfs "$work/rootfs"
  tar -C "$work/rootfs" --sort=name --numeric-owner --xattrs --xattrs-include='security.capability' \
    -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$ROOTFS_TAR"
  echo "build-base-image: built $ROOTFS_TAR ($(du -m "$ROOTFS_TAR" | cut -f1) MB) in $((SECONDS - start)) s"
fi

# Official Debian images set this PATH and CMD and nothing else.
podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase $SUITE, slim, base version $BASE_IMAGE_VERSION" \
  "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
imported_id > "$OUT/image-id"
echo "build-base-image: imported $BASE_IMAGE ($(cut -c1-12 "$OUT/image-id"), base version $BASE_IMAGE_VERSION)"
