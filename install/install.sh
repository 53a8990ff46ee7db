#!/usr/bin/env sh
# warpnet installer for manual use: a thin wrapper around warp-install (the
# DaemonSet's init container runs warp-install itself; the image has no
# shell). Same flags, see `install.sh --help`; --src defaults to ../bin next
# to this script (make build output).
#
#   sudo install/install.sh --cni-bin-dir /opt/cni/bin --conflist cni-conf/10-warpnet.conflist
set -eu
src="$(cd "$(dirname "$0")" && pwd)/../bin"
prev=""
for a in "$@"; do
  [ "$prev" = --src ] && src=$a
  case "$a" in --src=*) src=${a#--src=} ;; esac
  prev=$a
done
if [ ! -x "$src/warp-install" ]; then
  echo "install.sh: no warp-install in $src (run make build, or pass --src DIR)" >&2
  exit 1
fi
exec "$src/warp-install" --src "$src" "$@"
