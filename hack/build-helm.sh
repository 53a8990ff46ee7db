#!/usr/bin/env bash
# Builds the helm CLI that the chart tests and `make cluster` run, from the Go
# module proxy only, into ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/helm-<version>
# (WARP_KUBE_CACHE overrides the directory), unless it is there. The version
# and every dependency are pinned by tests/helm/build/go.mod and go.sum (a
# module of its own). About 3 minutes, once; serialized with flock.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/hack/lib/cached-build.sh"
mod="$root/tests/helm/build"
version=$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
kube=$(awk '$1 == "k8s.io/client-go" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
if [ -z "$version" ] || [ -z "$kube" ]; then
  echo "build-helm: no helm.sh/helm/v3 or k8s.io/client-go version in $mod/go.mod" >&2
  exit 1
fi
cache=${WARP_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warpnet}
bin="$cache/helm-$version"
if [ -x "$bin" ]; then
  echo "build-helm: $bin is there"
  exit 0
fi
command -v go >/dev/null || { echo "build-helm: go is not in PATH; cannot build helm $version" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$bin.lock"
if ! flock -n 9; then
  echo "build-helm: another build of $bin is running; waiting for it ..."
  flock 9
  [ -x "$bin" ] && { echo "build-helm: $bin is there"; exit 0; }
fi
# As helm's own Makefile stamps it (client-go v0.X.Y -> Kubernetes 1.X).
kminor=${kube#v0.}
kminor=${kminor%%.*}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
done
echo "build-helm: building helm $version into $bin (about 3 minutes, once)"
cached_build "helm-$version" "$mod" "$cache" "$ldflags" "helm=$bin" -- helm.sh/helm/v3/cmd/helm
