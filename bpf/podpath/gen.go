package podpath

// The programs are compiled by `make generate` (bpf2go, clang) against the
// headers in ../include only, so the output does not depend on the build
// machine's include path; the ELF object and Go bindings (pod_bpfel.*) are
// committed, so building warpnet needs no clang. Only little-endian targets
// are built: warpnet ships for amd64.
//
//go:generate go tool bpf2go -target bpfel -type iface -type ip_key -type ip_val -type endpoint -type counters -type lpm_key -cflags "-O2 -g -Wall -Werror -I../include" pod pod.c
