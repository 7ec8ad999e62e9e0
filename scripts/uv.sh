#!/usr/bin/env bash
# uv, pinned, from a venv of its own: `scripts/uv.sh ARGS...` runs it, making that venv first.
#
# Debian's python3 is "externally managed" (PEP 668): `pip install` into it is refused, and
# installing uv there would change the system anyway. So uv lives in a bootstrap venv made with
# Debian's python3-venv (no pyenv needed) under UV_HOME (default ~/.cache/k8s-job-dispatcher),
# one per uv version; uv then makes the project's .venv from uv.lock. As root on Debian, a
# missing python3-venv is installed with apt-get; otherwise it is named in one line.
set -euo pipefail
UV_VERSION=${UV_VERSION:-0.13.9}   # the Dockerfile's builder pins the same version
UV_HOME=${UV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-job-dispatcher}
BOOT=$UV_HOME/uv-$UV_VERSION
UV=$BOOT/bin/uv

make_venv() { rm -rf "$BOOT"; "$1" -m venv "$BOOT" >/dev/null 2>&1; }

bootstrap() {
  local python
  python=$(command -v python3) || { echo "uv: python3 is needed (apt-get install python3 python3-venv)" >&2; exit 1; }
  if ! make_venv "$python"; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "uv: $python cannot make a venv: install Debian's python3-venv (apt-get install python3-venv)" >&2
      exit 1
    fi
    echo "uv: installing Debian's python3-venv" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3-venv >/dev/null; } ||
      { echo "uv: could not install python3-venv with apt-get" >&2; exit 1; }
    make_venv "$python" || { echo "uv: $python -m venv $BOOT failed" >&2; exit 1; }
  fi
  "$BOOT/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" ||
    { rm -rf "$BOOT"; echo "uv: could not install uv $UV_VERSION from PyPI into $BOOT" >&2; exit 1; }
}

if [ ! -x "$UV" ]; then
  mkdir -p "$UV_HOME"
  exec 9>"$UV_HOME/.lock"
  flock 9   # one bootstrap at a time
  [ -x "$UV" ] || bootstrap
  exec 9>&-
fi
exec "$UV" "$@"
