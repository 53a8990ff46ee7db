#!/usr/bin/env bash
# Builds Multus's thin plugin (the `multus` CNI binary), which the cluster
# tests install as the nodes' primary CNI, from the Go module proxy only, into
# ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/multus-<version> (WARP_KUBE_CACHE
# overrides the directory), unless it is there. The version and every
# dependency are pinned by tests/multus/build/go.mod and go.sum (a module of
# its own), as is its installer, thin_entrypoint (multus-thin-entrypoint-<version>).
# Once; serialized with flock.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/hack/lib/cached-build.sh"
mod="$root/tests/multus/build"
pkg=gopkg.in/k8snetworkplumbingwg/multus-cni.v4
version=$(awk -v m=$pkg '$1 == m && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
[ -n "$version" ] || { echo "build-multus: no $pkg version in $mod/go.mod" >&2; exit 1; }
# As Multus's own build stamps its version.
cached_tool multus "$version" "$mod" "-s -w -X $pkg/pkg/multus.version=$version" $pkg/cmd/multus
# Multus's installer for the thin plugin (its DaemonSet's container): copies
# the plugin onto the node and writes 00-multus.conflist around the node's
# primary network.
cached_tool multus-thin-entrypoint "$version" "$mod" "-s -w" $pkg/cmd/thin_entrypoint
