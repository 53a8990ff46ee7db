#!/usr/bin/env bash
# Builds CoreDNS, which the cluster tests run as the cluster's DNS, from the
# Go module proxy only, into ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/coredns-<version>
# (WARP_KUBE_CACHE overrides the directory), unless it is there. The version
# and every dependency are pinned by tests/coredns/build/go.mod and go.sum (a
# module of its own). Once; serialized with flock.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/hack/lib/cached-build.sh"
mod="$root/tests/coredns/build"
pkg=github.com/coredns/coredns
version=$(awk -v m=$pkg '$1 == m && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
[ -n "$version" ] || { echo "build-coredns: no $pkg version in $mod/go.mod" >&2; exit 1; }
cached_tool coredns "$version" "$mod" "-s -w" $pkg
