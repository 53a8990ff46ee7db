package bpf

// The load balancer's programs (sock_lb.c) and the socket-destroying
// iterators (sock_destroy.c, loaded only by DestroySockets) are compiled like
// the XDP datapath's (see gen.go): output committed, little-endian only.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -type svc_key -type svc -type backend -type rev_slot -type revnat -type aff_key -type aff -type config -type meta -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" lb sock_lb.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" lbdestroy sock_destroy.c
