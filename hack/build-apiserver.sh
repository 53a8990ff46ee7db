#!/usr/bin/env bash
# Builds the real kube-apiserver that the e2e tests run (tests/apiserver),
# from the Go module proxy only, into a cache outside the repository, unless
# it is already there. tests/apiserver runs this script by itself when the
# binary is missing; `make apiserver` runs it ahead of time.
#
#   WARP_APISERVER_BIN  where the binary goes (default:
#                       ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/kube-apiserver-<version>)
#
# The version and every dependency are pinned by tests/apiserver/build/go.mod
# and go.sum (a module of its own, so the project's go.mod never depends on
# k8s.io/kubernetes). The first build takes about 4 minutes; later runs find
# the binary and return at once. Concurrent runs (test packages run in
# parallel) are serialized with flock, so only one of them builds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$root/tests/apiserver/build"

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
if [ -z "$version" ]; then
  echo "build-apiserver: no k8s.io/kubernetes version in $mod/go.mod" >&2
  exit 1
fi
bin=${WARP_APISERVER_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/kube-apiserver-$version}

if [ -x "$bin" ]; then
  echo "build-apiserver: $bin is there"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "build-apiserver: go is not in PATH; cannot build kube-apiserver $version" >&2
  exit 1
fi

mkdir -p "$(dirname "$bin")"
# One builder at a time; whoever waited finds the binary afterwards.
if command -v flock >/dev/null; then
  exec 9>"$bin.lock"
  if ! flock -n 9; then
    echo "build-apiserver: another build of $bin is running; waiting for it ..."
    flock 9
  fi
  if [ -x "$bin" ]; then
    echo "build-apiserver: $bin is there"
    exit 0
  fi
fi
# Leftovers of a build that was killed (we hold the lock, so none is running).
rm -f "$bin".tmp.*

tmp="$bin.tmp.$$"
log="$bin.build.log"
trap 'rm -f "$tmp"' EXIT

# Version stamping as in kubernetes' hack/lib/version.sh, with a fixed build
# date so that the build is reproducible.
major=${version#v}
major=${major%%.*}
minor=${version#v*.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

echo "build-apiserver: building kube-apiserver $version (about 4 minutes, once) into $bin ..."
echo "build-apiserver: log: $log"
start=$(date +%s)
# GOWORK=off: a go.work above the repository must not pull this module in.
# -mod=readonly: go.mod and go.sum are committed and complete; a build never
# rewrites them, and the module proxy is only asked for the pinned versions.
# CGO_ENABLED=0, -trimpath: a static, reproducible binary, as upstream ships.
# The build runs in the background so that SIGTERM/SIGINT/SIGHUP (a test
# that started this script and was stopped) stop it too instead of leaving an
# orphaned compiler running.
(cd "$mod" && exec env GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
  go build -trimpath -ldflags "$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver) >"$log" 2>&1 &
build=$!
trap 'kill -TERM "$build" 2>/dev/null; wait "$build" 2>/dev/null; rm -f "$tmp"; exit 130' TERM INT HUP
if ! wait "$build"; then
  echo "build-apiserver: building kube-apiserver $version FAILED; last lines of $log:" >&2
  tail -n 25 "$log" >&2
  echo "build-apiserver: (the build needs the Go module proxy, $(go env GOPROXY), and about 2 GB of disk)" >&2
  exit 1
fi
mv -f "$tmp" "$bin"
echo "build-apiserver: built $bin in $(( $(date +%s) - start ))s"
