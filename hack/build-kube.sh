#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests and `make cluster` run, from the Go
# module proxy only, into a cache outside the repository, unless they are
# already there:
#
#   hack/build-kube.sh [NAME...]    NAME: kube-apiserver kube-controller-manager
#                                   kube-scheduler kube-proxy kubelet kubectl (default: all)
#
# Each binary goes to ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/NAME-<version>
# (WARP_KUBE_CACHE overrides the directory; WARP_APISERVER_BIN the path of
# kube-apiserver alone, for tests/apiserver). tests/apiserver and tests/k8s
# run this script by themselves when a binary is missing; `make kube` (a step
# of `make test`) runs it ahead of time.
#
# The version and every dependency are pinned by tests/apiserver/build/go.mod
# and go.sum (a module of its own, so the project's go.mod never depends on
# k8s.io/kubernetes; its `tool` lines name the commands). The missing binaries
# are built by one `go build`, so the packages they share compile once.
# Concurrent runs (test packages run in parallel) are serialized with flock;
# whoever waited builds only what is still missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/hack/lib/cached-build.sh"
mod="$root/tests/apiserver/build"
all=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl)

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
if [ -z "$version" ]; then
  echo "build-kube: no k8s.io/kubernetes version in $mod/go.mod" >&2
  exit 1
fi
cache=${WARP_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warpnet}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
for n in "${names[@]}"; do
  case " ${all[*]} " in
    *" $n "*) ;;
    *) echo "build-kube: unknown binary $n (known: ${all[*]})" >&2; exit 2 ;;
  esac
done

path_of() { # path_of NAME: where the cached binary is (or goes)
  if [ "$1" = kube-apiserver ] && [ -n "${WARP_APISERVER_BIN:-}" ]; then
    echo "$WARP_APISERVER_BIN"
  else
    echo "$cache/$1-$version"
  fi
}
missing() { # the requested binaries not yet in the cache
  local n
  for n in "${names[@]}"; do [ -x "$(path_of "$n")" ] || echo "$n"; done
}

want=$(missing)
if [ -z "$want" ]; then
  echo "build-kube: ${names[*]} $version: in the cache ($cache)"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "build-kube: go is not in PATH; cannot build $want ($version)" >&2
  exit 1
fi
mkdir -p "$cache"
exec 9>"$cache/kube-$version.lock"
if ! flock -n 9; then
  echo "build-kube: another build is running (lock $cache/kube-$version.lock); waiting for it ..."
  flock 9
  want=$(missing)
  if [ -z "$want" ]; then
    echo "build-kube: ${names[*]} $version: in the cache ($cache)"
    exit 0
  fi
fi

# Version stamping as in kubernetes' hack/lib/version.sh, with a fixed build
# date and tree state so that the build is reproducible; without it nodes
# report kubeletVersion v0.0.0-master+$Format:%H$.
major=${version#v}
major=${major%%.*}
minor=${version#v*.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

dests=() pkgs=()
for n in $want; do
  dests+=("$n=$(path_of "$n")")
  pkgs+=("k8s.io/kubernetes/cmd/$n")
done
echo "build-kube: building" $want "($version) into $cache, once (cold: about 4 minutes for kube-apiserver alone, 12 for all six on 2 cores)"
cached_build "kube-$version" "$mod" "$cache" "$ldflags" "${dests[@]}" -- "${pkgs[@]}"
