//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Iterators over the load balancer's sockets, loaded only when needed, so
 * that the load balancer itself works on kernels without them:
 *
 *   lb_destroy_tcp/udp  destroy the sockets the load balancer connected to
 *                       any of the backends in lb_targets
 *                       (LB.DestroySockets; bpf_sock_destroy, kernel >= 6.5)
 *   lb_dump_tcp/udp     write each socket's lb_sock state (LB.RevNAT)
 *   lb_copy_tcp/udp     copy each socket's lb_sock state into lb_sock_new
 *                       (a rebuild of the maps for other capacities)
 *
 * They walk the sockets of one network namespace (the one the iterator is
 * opened in): socket-local storage can only be read through its socket, and
 * the kernel here refuses iterators over the storage map itself
 * (iter/bpf_sk_storage_map loads fail with EPERM on Linux 6.18).
 *
 * A connected UDP socket keeps sending to the backend it was translated to
 * even after that backend left the service (a DNS resolver's socket, say);
 * destroying it makes the application see an error (ECONNABORTED) and open
 * a new socket, which connect() translates to a live backend. A socket is
 * destroyed when its peer is one of the targets and its lb_sock state says
 * the load balancer translated it there: a pod's direct connection to the
 * same pod address is not touched. All targets are destroyed in one walk of
 * a namespace's sockets.
 *
 * The kernel structs are declared with the few fields used and relocated
 * against the running kernel's BTF (CO-RE).
 */
#include <stdbool.h>
#include "uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sock_lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

/* TCP states that are not full sockets or have no peer. */
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock;
struct udp_sock;
struct tcp_sock;
struct bpf_map;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* The load balancer's pinned lb_sock, given at load time. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} lb_sock SEC(".maps");

/* lb_copy's destination: the new maps' lb_sock. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} lb_sock_new SEC(".maps");

/* A backend whose sockets are destroyed. */
struct target {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 proto;
};

/* Filled by user space before the walk. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct target);
	__type(value, __u8);
} lb_targets SEC(".maps");

/*
 * The iterators' output, per socket: its cookie (__u64), then, from the
 * destroy iterators, the struct target it was connected to, or, from the
 * dump iterators, its struct sock_state.
 */

/* sk's state, if the load balancer translated it. */
static __always_inline struct sock_state *state_of(void *sk)
{
	return bpf_sk_storage_get(&lb_sock, sk, 0, 0);
}

/* The full TCP socket of an iter/tcp entry (none for time-wait and
 * request sockets, which have no storage). */
static __always_inline struct tcp_sock *tcp_full(struct sock_common *skc)
{
	return skc ? bpf_skc_to_tcp_sock(skc) : 0;
}

/*
 * Fills t with the socket's peer and reports whether it is a target that
 * the load balancer connected the socket to (skc and sk are the same
 * socket; sk typed as a full socket, for its storage).
 */
static __always_inline bool find_target(struct sock_common *skc, void *sk, __u8 proto, struct target *t)
{
	__u32 *a = (__u32 *)t->addr;
	struct sock_state *st;
	__u16 family = skc->skc_family;

	__builtin_memset(t, 0, sizeof(*t));
	t->port = skc->skc_dport;
	t->proto = proto;
	if (family == AF_INET) {
		a[0] = skc->skc_daddr;
		t->family = WARP_FAMILY_V4;
	} else if (family == AF_INET6) {
		a[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		a[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		a[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		a[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
		t->family = WARP_FAMILY_V6;
		if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)) {
			a[0] = a[3];
			a[1] = a[2] = a[3] = 0;
			t->family = WARP_FAMILY_V4;
		}
	} else {
		return false;
	}
	if (!bpf_map_lookup_elem(&lb_targets, t))
		return false;

	st = state_of(sk);
	if (!st)
		return false;
#pragma unroll
	for (int i = 0; i < LB_REV_SLOTS; i++) {
		struct rev_slot *s = &st->slots[i];
		const __u32 *b = (const __u32 *)s->be_addr;

		if (s->family == t->family && s->proto == proto && s->be_port == t->port && b[0] == a[0] &&
		    b[1] == a[1] && b[2] == a[2] && b[3] == a[3])
			return true;
	}
	return false;
}

static __always_inline void destroyed(struct bpf_iter_meta *meta, struct sock_common *sk, struct target *t)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_seq_write(meta->seq, &cookie, sizeof(cookie));
	bpf_seq_write(meta->seq, t, sizeof(*t));
}

SEC("iter/tcp")
int lb_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	struct target t;
	unsigned char state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV || state == TCP_LISTEN || state == TCP_CLOSE)
		return 0;
	tp = tcp_full(skc);
	if (!tp)
		return 0;
	if (find_target(skc, tp, IPPROTO_TCP, &t) && bpf_sock_destroy(skc) == 0)
		destroyed(ctx->meta, skc, &t);
	return 0;
}

SEC("iter/udp")
int lb_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct sock_common *skc = (struct sock_common *)ctx->udp_sk;
	struct target t;

	if (!skc)
		return 0;
	if (find_target(skc, ctx->udp_sk, IPPROTO_UDP, &t) && bpf_sock_destroy(skc) == 0)
		destroyed(ctx->meta, skc, &t);
	return 0;
}

static __always_inline void dump(struct bpf_iter_meta *meta, void *sk)
{
	struct sock_state *st = state_of(sk);
	__u64 cookie;

	if (!st)
		return;
	cookie = bpf_get_socket_cookie(sk);
	bpf_seq_write(meta->seq, &cookie, sizeof(cookie));
	bpf_seq_write(meta->seq, st, sizeof(*st));
}

SEC("iter/tcp")
int lb_dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp = tcp_full(ctx->sk_common);

	if (tp)
		dump(ctx->meta, tp);
	return 0;
}

SEC("iter/udp")
int lb_dump_udp(struct bpf_iter__udp *ctx)
{
	if (ctx->udp_sk)
		dump(ctx->meta, ctx->udp_sk);
	return 0;
}

/*
 * Creates the socket's state in the new map unless the new programs already
 * did (a socket that connected or sent since).
 */
static __always_inline void copy(void *sk)
{
	struct sock_state *st = state_of(sk);

	if (st)
		bpf_sk_storage_get(&lb_sock_new, sk, st, BPF_SK_STORAGE_GET_F_CREATE);
}

SEC("iter/tcp")
int lb_copy_tcp(struct bpf_iter__tcp *ctx)
{
	struct tcp_sock *tp = tcp_full(ctx->sk_common);

	if (tp)
		copy(tp);
	return 0;
}

SEC("iter/udp")
int lb_copy_udp(struct bpf_iter__udp *ctx)
{
	if (ctx->udp_sk)
		copy(ctx->udp_sk);
	return 0;
}
