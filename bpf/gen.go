package bpf

// The programs are compiled once by `make generate` (bpf2go, clang) and the
// resulting ELF object and Go bindings (xdp_bpfel.o, xdp_bpfel.go) are
// committed, so building warpnet needs no clang. Only little-endian
// targets are built: warpnet ships for amd64.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -type iface -type ip_key -type ip_val -type endpoint -type counters -type meta -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" xdp xdp_pod.c
