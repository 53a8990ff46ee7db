//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket iterators that destroy the sockets the load balancer connected to
 * one backend (LB.DestroySockets). A connected UDP socket keeps sending to
 * the backend it was translated to even after that backend left the service
 * (a DNS resolver's socket, say); destroying it makes the application see an
 * error (ECONNABORTED) and open a new socket, which connect() translates to a
 * live backend.
 *
 * A socket is destroyed when its peer is the target backend and its
 * lb_revnat entry says the load balancer translated it to that backend: a
 * pod's direct connection to the same pod address is not touched.
 *
 * bpf_sock_destroy (kernel >= 6.5) may only be called from iter/tcp and
 * iter/udp programs. This object is separate from sock_lb.c and loaded only
 * when needed, so that the load balancer itself works on kernels without
 * it. Each destroyed socket's cookie is written to the iterator's output.
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

struct udp_sock;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Replaced by the load balancer's pinned map at load time. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_REVNAT);
	__type(key, __u64);
	__type(value, struct revnat);
} lb_revnat SEC(".maps");

/* The backend whose sockets are destroyed (set before loading). */
volatile const struct backend target;

/* Whether sk's peer is the target and the load balancer put it there. */
static __always_inline bool is_target(struct sock_common *sk, __u8 proto)
{
	__u32 a[4] = {};
	__u64 cookie;
	struct revnat *r;
	const volatile __u32 *t = (const volatile __u32 *)target.addr;
	__u16 family = sk->skc_family;

	if (sk->skc_dport != target.port)
		return false;
	if (family == AF_INET) {
		a[0] = sk->skc_daddr;
	} else if (family == AF_INET6) {
		a[0] = sk->skc_v6_daddr.in6_u.u6_addr32[0];
		a[1] = sk->skc_v6_daddr.in6_u.u6_addr32[1];
		a[2] = sk->skc_v6_daddr.in6_u.u6_addr32[2];
		a[3] = sk->skc_v6_daddr.in6_u.u6_addr32[3];
		if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)) {
			a[0] = a[3];
			a[1] = a[2] = a[3] = 0;
		}
	} else {
		return false;
	}
	if (a[0] != t[0] || a[1] != t[1] || a[2] != t[2] || a[3] != t[3])
		return false;

	cookie = bpf_get_socket_cookie(sk);
	r = bpf_map_lookup_elem(&lb_revnat, &cookie);
	if (!r)
		return false;
#pragma unroll
	for (int i = 0; i < LB_REV_SLOTS; i++) {
		struct rev_slot *s = &r->slots[i];
		const __u32 *b = (const __u32 *)s->be_addr;

		if (s->family == target.family && s->proto == proto && s->be_port == target.port &&
		    b[0] == t[0] && b[1] == t[1] && b[2] == t[2] && b[3] == t[3])
			return true;
	}
	return false;
}

static __always_inline void destroyed(struct bpf_iter_meta *meta, struct sock_common *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_seq_write(meta->seq, &cookie, sizeof(cookie));
}

SEC("iter/tcp")
int lb_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	unsigned char state;

	if (!sk)
		return 0;
	state = sk->skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV || state == TCP_LISTEN || state == TCP_CLOSE)
		return 0;
	if (is_target(sk, IPPROTO_TCP) && bpf_sock_destroy(sk) == 0)
		destroyed(ctx->meta, sk);
	return 0;
}

SEC("iter/udp")
int lb_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct sock_common *sk = (struct sock_common *)ctx->udp_sk;

	if (!sk)
		return 0;
	if (is_target(sk, IPPROTO_UDP) && bpf_sock_destroy(sk) == 0)
		destroyed(ctx->meta, sk);
	return 0;
}
