#!/usr/bin/env bash
# Builds whereabouts, the cluster-wide IPAM plugin that `make bench` runs
# beside warp-ipam's kubernetes store (tests/bench), from the Go module
# proxy only, into a cache outside the repository, unless it is already
# there; next to it go whereabouts' own CRDs, from the same module.
#
#   WARP_WHEREABOUTS_BIN  where the binary goes (default:
#                         ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/whereabouts-<version>;
#                         the CRDs go to <that>.crds/)
#
# The version and every dependency are pinned by tests/bench/whereabouts/
# go.mod and go.sum (a module of its own: the project's go.mod never
# depends on whereabouts). Concurrent runs are serialized with flock.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$root/tests/bench/whereabouts"
pkg=github.com/k8snetworkplumbingwg/whereabouts

version=$(awk -v p="$pkg" '$1 == p && $2 ~ /^v[0-9]/ { print $2; exit } $1 == "require" && $2 == p { print $3; exit }' "$mod/go.mod")
if [ -z "$version" ]; then
  echo "build-whereabouts: no $pkg version in $mod/go.mod" >&2
  exit 1
fi
bin=${WARP_WHEREABOUTS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/whereabouts-$version}
crds="$bin.crds"

if [ -x "$bin" ] && [ -d "$crds" ]; then
  echo "build-whereabouts: $bin is there"
  exit 0
fi
mkdir -p "$(dirname "$bin")"
exec 9>"$bin.lock"
if ! flock -n 9; then
  echo "build-whereabouts: another build of $bin is running; waiting for it ..."
  flock 9
fi
if [ -x "$bin" ] && [ -d "$crds" ]; then
  echo "build-whereabouts: $bin is there"
  exit 0
fi
rm -f "$bin".tmp.*
tmp="$bin.tmp.$$"
log="$bin.build.log"
trap 'rm -f "$tmp"' EXIT

echo "build-whereabouts: building whereabouts $version into $bin (about a minute, once) ..."
start=$(date +%s)
# As upstream's Makefile stamps it; GOWORK=off and -mod=readonly as for the
# API server: the committed go.mod and go.sum are complete.
ldflags="-s -w -X $pkg/pkg/version.Version=$version"
(cd "$mod" && exec env GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
  go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg/cmd") >"$log" 2>&1 &
build=$!
trap 'kill -TERM "$build" 2>/dev/null; wait "$build" 2>/dev/null; rm -f "$tmp"; exit 130' TERM INT HUP
if ! wait "$build"; then
  echo "build-whereabouts: building whereabouts $version FAILED; last lines of $log:" >&2
  tail -n 25 "$log" >&2
  exit 1
fi
src=$(cd "$mod" && GOWORK=off GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' "$pkg")
rm -rf "$crds.tmp" && mkdir -p "$crds.tmp"
cp "$src"/doc/crds/whereabouts.cni.cncf.io_ippools.yaml "$src"/doc/crds/whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml "$crds.tmp/"
chmod -R u+w "$crds.tmp"
rm -rf "$crds" && mv "$crds.tmp" "$crds"
mv -f "$tmp" "$bin"
echo "build-whereabouts: built $bin in $(( $(date +%s) - start ))s"
