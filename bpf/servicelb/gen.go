package servicelb

// The load balancer's programs (sock_lb.c) and the socket iterators
// (sock_iter.c: destroy, dump and copy, loaded only when needed) are
// compiled by `make generate` (bpf2go, clang) against the headers in
// ../include only; output committed, little-endian only.
//
//go:generate go tool bpf2go -target bpfel -type svc_key -type svc -type backend -type rev_slot -type sock_state -type aff_key -type aff -type config -cflags "-O2 -g -Wall -Werror -I../include" lb sock_lb.c
//go:generate go tool bpf2go -target bpfel -type target -cflags "-O2 -g -Wall -Werror -I../include" lbiter sock_iter.c
