#!/usr/bin/env bash
# Installs the Debian packages warpnet needs to build, test, benchmark and demo,
# skipping those already present. Run by `make deps` (and so by `make test`).
set -uo pipefail

# package: why we need it
PACKAGES=(
  "clang:compiles the BPF C programs (make generate)"
  "llvm:llvm-strip for BPF objects"
  "libbpf-dev:BPF helper headers"
  "bpftool:inspecting loaded BPF programs and maps"
  "iproute2:ip netns / ip link in tests and the demo"
  "iptables:kube-proxy comparison and rule checks"
  "nftables:kube-proxy nftables mode"
  "socat:bridging the API server into node namespaces"
  "iperf3:throughput benchmarks"
  "etcd-server:the real Kubernetes API server's store"
  "containerd:a real runtime calling the plugins through CRI"
  "runc:containerd's runtime"
  "containernetworking-plugins:reference plugins (host-local, bridge, ptp) for comparisons"
  "util-linux:nsenter"
  "iputils-ping:ping inside test namespaces"
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for entry in "${PACKAGES[@]}"; do
  pkg=${entry%%:*}
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: need root to apt-get install; rerun as root (sudo make deps)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "deps: apt-get update ..."
if ! apt-get update -q >/tmp/warpnet-apt-update.log 2>&1; then
  echo "deps: apt-get update failed; see /tmp/warpnet-apt-update.log" >&2
  exit 1
fi
echo "deps: apt-get install ... (log: /tmp/warpnet-apt-install.log)"
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/warpnet-apt-install.log 2>&1; then
  echo "deps: apt-get install failed; last lines of /tmp/warpnet-apt-install.log:" >&2
  tail -n 15 /tmp/warpnet-apt-install.log >&2
  exit 1
fi
failed=()
for pkg in "${missing[@]}"; do
  installed "$pkg" || failed+=("$pkg")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "deps: still missing after install: ${failed[*]}" >&2
  exit 1
fi
echo "deps: installed ${missing[*]}"
