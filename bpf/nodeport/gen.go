package nodeport

// The north-south load balancer (nodeport.c) is compiled by `make generate`
// (bpf2go, clang) against the headers in ../include only; output committed,
// little-endian only.
//
//go:generate go tool bpf2go -target bpfel -type np_fe_key -type np_fe -type np_svc_key -type np_svc -type np_backend -type np_iface -type np_tunnel_key -type np_tunnel -type np_cfg -type np_ct_key -type np_ct -type np_stat_key -type np_stat -cflags "-O2 -g -Wall -Werror -I../include" np nodeport.c
