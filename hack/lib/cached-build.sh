# Sourced by hack/build-kube.sh and hack/build-helm.sh: the one way this
# project builds a tool from the Go module proxy into its cache.
#
#   cached_build WHAT MODULE_DIR CACHE_DIR LDFLAGS NAME=DEST... -- PKG...
#
# Builds PKG... of the nested module MODULE_DIR with one `go build` (shared
# packages compile once) into a temporary directory under CACHE_DIR and
# renames each NAME (a package's binary) to DEST. The caller holds the lock.
# Prints a progress line every minute (packages compiled so far), stops the
# build on SIGTERM/SIGINT/SIGHUP, and on failure prints the log's tail.
cached_build() {
  local what=$1 mod=$2 cache=$3 ldflags=$4
  shift 4
  local -a dests=() pkgs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do dests+=("$1"); shift; done
  shift
  pkgs=("$@")
  local out="$cache/.build-$what.$$" log="$cache/$what.build.log" start
  rm -rf "$cache/.build-$what".* # a killed build's leftovers (the caller holds the lock)
  mkdir -p "$out"
  echo "$what: log: $log"
  start=$(date +%s)
  # GOWORK=off: a go.work above the repository must not pull the module in.
  # -mod=readonly: go.mod and go.sum are committed and complete; a build never
  # rewrites them, and the module proxy is only asked for the pinned versions.
  # CGO_ENABLED=0, -trimpath: static, reproducible binaries, as upstream ships.
  # -v lists each package as it is compiled: the progress line counts them.
  # In the background, so that a signal (a test that ran this was stopped)
  # stops the compiler too instead of leaving it orphaned.
  (cd "$mod" && exec env GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    go build -v -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}") >"$log" 2>&1 &
  local build=$!
  trap 'kill -TERM '"$build"' 2>/dev/null; wait '"$build"' 2>/dev/null; rm -rf "'"$out"'"; exit 130' TERM INT HUP
  (while sleep 60; do
    echo "$what: ... $(( $(date +%s) - start ))s, $(grep -c . "$log" 2>/dev/null || echo 0) packages compiled"
  done) &
  local progress=$! status=0
  wait "$build" || status=$?
  kill "$progress" 2>/dev/null || true
  wait "$progress" 2>/dev/null || true
  trap - TERM INT HUP
  if [ "$status" -ne 0 ]; then
    echo "$what: build FAILED; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    echo "$what: (the build needs the Go module proxy, $(go env GOPROXY), and a few GB of disk)" >&2
    rm -rf "$out"
    return 1
  fi
  local d name dest
  for d in "${dests[@]}"; do
    name=${d%%=*} dest=${d#*=}
    mkdir -p "$(dirname "$dest")"
    mv -f "$out/$name" "$dest"
    echo "$what: $dest"
  done
  rm -rf "$out"
  echo "$what: built in $(( $(date +%s) - start ))s"
}

#   cached_tool NAME VERSION MODULE_DIR LDFLAGS PKG
#
# Builds one tool (the binary of PKG, pinned by the nested module MODULE_DIR)
# into the cache as NAME-VERSION, unless it is there; serialized across
# processes with flock (whoever waited finds it built). The cache is
# ${WARP_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warpnet}.
cached_tool() {
  local name=$1 version=$2 mod=$3 ldflags=$4 pkg=$5
  local cache=${WARP_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warpnet}
  local bin="$cache/$name-$version"
  if [ -x "$bin" ]; then
    echo "build-$name: $bin is there"
    return 0
  fi
  command -v go >/dev/null || { echo "build-$name: go is not in PATH; cannot build $name $version" >&2; return 1; }
  mkdir -p "$cache"
  exec 9>"$bin.lock"
  if ! flock -n 9; then
    echo "build-$name: another build of $bin is running; waiting for it ..."
    flock 9
    [ -x "$bin" ] && { echo "build-$name: $bin is there"; return 0; }
  fi
  echo "build-$name: building $name $version into $bin (once)"
  cached_build "$name-$version" "$mod" "$cache" "$ldflags" "$(basename "$pkg")=$bin" -- "$pkg"
}
