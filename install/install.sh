#!/usr/bin/env sh
# warpnet installer, run as an init container (or by hand) on every node:
# copies the plugin binaries into the CNI bin directory and, if asked, a
# network configuration into the CNI conf directory. Each file is copied to a
# temporary name and renamed into place, so a runtime never executes a
# half-written plugin.
set -eu

usage() {
  cat <<USAGE
Usage: install.sh [--src DIR] [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--conflist FILE]
  --src DIR           where the warpnet binaries are (default: ../bin next to this script)
  --cni-bin-dir DIR   CNI plugin directory (default: /opt/cni/bin)
  --cni-conf-dir DIR  CNI configuration directory (default: /etc/cni/net.d)
  --conflist FILE     also install this network configuration (e.g. cni-conf/10-warpnet.conflist)
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
src="$here/../bin"
bin_dir=/opt/cni/bin
conf_dir=/etc/cni/net.d
conflist=""
while [ $# -gt 0 ]; do
  case "$1" in
    --src) src=$2; shift 2 ;;
    --cni-bin-dir) bin_dir=$2; shift 2 ;;
    --cni-conf-dir) conf_dir=$2; shift 2 ;;
    --conflist) conflist=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

place() { # place SRC DEST MODE
  tmp="$2.warpnet-tmp.$$"
  cp "$1" "$tmp" && chmod "$3" "$tmp" && mv -f "$tmp" "$2"
}

mkdir -p "$bin_dir"
n=0
for b in warp-ipam warp-veth warp-sriov; do
  if [ -f "$src/$b" ]; then
    place "$src/$b" "$bin_dir/$b" 0755
    echo "install.sh: $b -> $bin_dir/$b"
    n=$((n + 1))
  fi
done
if [ "$n" -eq 0 ]; then
  echo "install.sh: no warpnet binaries in $src (run make build, or pass --src)" >&2
  exit 1
fi
if [ -n "$conflist" ]; then
  mkdir -p "$conf_dir"
  place "$conflist" "$conf_dir/$(basename "$conflist")" 0644
  echo "install.sh: $(basename "$conflist") -> $conf_dir"
fi
