//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level service load balancing (cgroup sock_addr programs).
 *
 * Attached to a cgroup v2 (the node's pods), these programs translate a
 * service address (ClusterIP:port) to a backend (pod) address once, when a
 * socket connects (TCP, connected UDP) or sends (unconnected UDP), instead
 * of per packet: the packets carry the backend's address from the start, so
 * pod-to-service traffic runs at pod-to-pod speed and needs no NAT on the
 * node, and SR-IOV pods, whose packets never traverse the node's netfilter,
 * reach services too.
 *
 *   lb_connect4/6     TCP and connected UDP: pick a backend, rewrite the
 *                     destination, remember the service for the socket
 *   lb_sendmsg4/6     unconnected UDP: the same per datagram, but a socket
 *                     stays on the backend it was given while that backend
 *                     is still one of the service's
 *   lb_recvmsg4/6     UDP replies appear to come from the service address
 *   lb_getpeername4/6 the application sees the service address as its peer
 *
 * What a socket was translated to is kept in socket-local storage
 * (lb_sock), which the kernel frees with the socket: a connect costs no
 * hash insert, and a close no program run and no delete.
 *
 * IPv4-mapped destinations (::ffff:a.b.c.d) of AF_INET6 sockets reach the
 * *6 programs (connect6, recvmsg6, getpeername6) and are looked up as IPv4
 * services; unconnected sends to them run sendmsg4 (udpv6_sendmsg hands
 * them to udp_sendmsg).
 *
 * Only TCP and UDP are translated; everything else passes untouched. A
 * service with no backends makes connect() and sendmsg() fail at once with
 * ECONNREFUSED (bpf_set_retval, as Cilium does), instead of the connection
 * attempt to the unroutable ClusterIP timing out.
 */
#include <stdbool.h>
#include "uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sock_lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define SYS_REJECT 0
#define SYS_PROCEED 1

/* How often a program re-reads a service that changed under it. */
#define LB_ATTEMPTS 3

/*
 * Services and backends are written by user space only; not preallocated, so
 * a node pays for the services it has. max_entries are set by Open.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_SERVICES + LB_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_backends SEC(".maps");

/*
 * Per-socket state, written by the programs: socket-local storage, created
 * at the socket's first translation and freed with the socket.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_AFFINITY);
	__type(key, struct aff_key);
	__type(value, struct aff);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_config SEC(".maps");

/* Read by Go only: layout version and build ID of the pinned objects. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_meta SEC(".maps");

/* An address as four words; all address fields are 4-byte aligned. */
static __always_inline bool addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline void addr_copy(__u8 *dst, const __u8 *src)
{
	__u32 *d = (__u32 *)dst;
	const __u32 *s = (const __u32 *)src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

/*
 * The destination (or, in recvmsg/getpeername, the peer) of ctx as a
 * family and 16-byte address. *mapped is set for ::ffff:a.b.c.d, which is
 * returned as the IPv4 address.
 */
static __always_inline void ctx_addr(struct bpf_sock_addr *ctx, bool v6, __u8 *addr, __u8 *family,
				     bool *mapped)
{
	__u32 *a = (__u32 *)addr;

	*mapped = false;
	if (!v6) {
		a[0] = ctx->user_ip4;
		a[1] = a[2] = a[3] = 0;
		*family = WARP_FAMILY_V4;
		return;
	}
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)) {
		a[0] = a[3];
		a[1] = a[2] = a[3] = 0;
		*mapped = true;
		*family = WARP_FAMILY_V4;
		return;
	}
	*family = WARP_FAMILY_V6;
}

/* Writes addr:port (of the family ctx_addr reported) into ctx. */
static __always_inline void ctx_set(struct bpf_sock_addr *ctx, bool v6, bool mapped, const __u8 *addr,
				    __be16 port)
{
	const __u32 *a = (const __u32 *)addr;

	if (!v6) {
		ctx->user_ip4 = a[0];
	} else if (mapped) {
		ctx->user_ip6[3] = a[0]; /* keeps ::ffff: */
	} else {
		ctx->user_ip6[0] = a[0];
		ctx->user_ip6[1] = a[1];
		ctx->user_ip6[2] = a[2];
		ctx->user_ip6[3] = a[3];
	}
	ctx->user_port = (__u32)port;
}

/* lb_config's host-only mode: sockets outside the host namespace pass. */
static __always_inline bool skip_namespace(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&lb_config, &zero);

	if (!c || !(c->flags & LB_CFG_HOST_ONLY))
		return false;
	return bpf_get_netns_cookie(ctx) != c->host_netns;
}

/*
 * Copies backend id into *out and reports whether it is a backend of
 * service svc_id with the family the socket needs. A false answer for an id
 * just read from the service means the service changed meanwhile.
 */
static __always_inline bool backend_get(__u32 id, __u32 svc_id, __u8 family, struct backend *out)
{
	struct backend *b = bpf_map_lookup_elem(&lb_backends, &id);

	if (!b)
		return false;
	__builtin_memcpy(out, b, sizeof(*out));
	return out->svc_id == svc_id && out->family == family;
}

/*
 * The socket's earlier choice for this service (unconnected UDP), if that
 * backend still serves it: same id, same owner, same address and port.
 */
static __always_inline bool rev_sticky(const struct sock_state *r, const struct svc_key *key, __u32 svc_id,
				       __u32 *bid, struct backend *be)
{
#pragma unroll
	for (int i = 0; i < LB_REV_SLOTS; i++) {
		const struct rev_slot *s = &r->slots[i];

		if (s->family != key->family || s->proto != key->proto || s->svc_id != svc_id ||
		    s->fe_port != key->port || !addr_eq(s->fe_addr, key->addr))
			continue;
		if (!backend_get(s->backend_id, svc_id, key->family, be))
			return false;
		if (be->port != s->be_port || !addr_eq(be->addr, s->be_addr))
			return false;
		*bid = s->backend_id;
		return true;
	}
	return false;
}

enum { XLATE_NONE, XLATE_DONE, XLATE_EMPTY, XLATE_FAILED };

/*
 * Picks a backend of the service key names (slot 0): the socket's earlier
 * choice (r, unconnected UDP), else the client's affinity entry if the
 * service has affinity and the entry is fresh, else a random slot of the
 * header's generation. A slot or backend that vanished because the service
 * was being updated sends it back to the header: user space writes slots
 * and backends before the header that counts them and deletes them only
 * after, so a fresh header read always leads to complete entries.
 */
static __always_inline int lb_select(struct bpf_sock_addr *ctx, struct svc_key *key,
				     const struct sock_state *r, __u32 *svc_out, __u32 *bid_out,
				     struct backend *be)
{
	for (int attempt = 0; attempt < LB_ATTEMPTS; attempt++) {
		struct svc *h, *s;
		__u32 count, svc_id, aff_ms, gen, bid = 0, idx;
		struct aff_key ak = {};
		struct aff *a, na = {};
		__u64 now = 0;
		bool found = false;

		key->slot = 0;
		key->gen = 0;
		h = bpf_map_lookup_elem(&lb_services, key);
		if (!h)
			return XLATE_NONE;
		count = h->count;
		svc_id = h->svc_id;
		aff_ms = h->affinity_ms;
		gen = h->gen;
		if (count == 0)
			return XLATE_EMPTY;
		if (count > 0xffff)
			count = 0xffff;
		*svc_out = svc_id;

		if (r && rev_sticky(r, key, svc_id, &bid, be))
			found = true;

		if (aff_ms) {
			now = bpf_ktime_get_boot_ns();
			ak.netns_cookie = bpf_get_netns_cookie(ctx);
			ak.svc_id = svc_id;
			ak.family = key->family;
			ak.proto = key->proto;
			if (!found) {
				a = bpf_map_lookup_elem(&lb_affinity, &ak);
				if (a) {
					__u32 abid = a->backend_id;
					__u64 last = a->last_used;

					if (now - last <= (__u64)aff_ms * 1000000ULL &&
					    backend_get(abid, svc_id, key->family, be)) {
						bid = abid;
						found = true;
					}
				}
			}
		}

		if (!found) {
			idx = bpf_get_prandom_u32() % count + 1;
			key->slot = idx;
			key->gen = gen;
			s = bpf_map_lookup_elem(&lb_services, key);
			key->slot = 0;
			key->gen = 0;
			if (!s)
				continue;
			bid = s->backend_id;
			if (!backend_get(bid, svc_id, key->family, be))
				continue;
		}

		if (aff_ms) {
			na.backend_id = bid;
			na.last_used = now;
			bpf_map_update_elem(&lb_affinity, &ak, &na, BPF_ANY);
		}
		*bid_out = bid;
		return XLATE_DONE;
	}
	return XLATE_FAILED;
}

static __always_inline void rev_fill(struct rev_slot *s, const struct svc_key *key, __u32 svc_id,
				     __u32 bid, const struct backend *be)
{
	addr_copy(s->fe_addr, key->addr);
	addr_copy(s->be_addr, be->addr);
	s->fe_port = key->port;
	s->be_port = be->port;
	s->family = key->family;
	s->proto = key->proto;
	s->pad = 0;
	s->svc_id = svc_id;
	s->backend_id = bid;
}

/* connect4/6 and sendmsg4/6. */
static __always_inline int lb_fwd(struct bpf_sock_addr *ctx, bool v6, bool sendmsg)
{
	struct svc_key key = {};
	struct backend be = {};
	struct sock_state *st = NULL;
	struct rev_slot *s;
	__u32 svc_id = 0, bid = 0;
	bool mapped;
	int ret, i, slot = -1, empty = -1;

	key.proto = ctx->protocol;
	if (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP)
		return SYS_PROCEED;
	ctx_addr(ctx, v6, key.addr, &key.family, &mapped);
	key.port = (__be16)ctx->user_port;
	if (skip_namespace(ctx))
		return SYS_PROCEED;

	/* An unconnected UDP socket's earlier choices (stickiness). */
	if (sendmsg && ctx->sk)
		st = bpf_sk_storage_get(&lb_sock, ctx->sk, 0, 0);

	ret = lb_select(ctx, &key, st, &svc_id, &bid, &be);
	switch (ret) {
	case XLATE_NONE:
		return SYS_PROCEED;
	case XLATE_EMPTY:
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	case XLATE_FAILED:
		bpf_set_retval(-EHOSTUNREACH);
		return SYS_REJECT;
	}
	ctx_set(ctx, v6, mapped, be.addr, be.port);

	/*
	 * Remember the translation for recvmsg and getpeername. A connect
	 * starts the socket's state afresh: a connected socket only hears
	 * from its one peer. A send updates the slot of its service, or takes
	 * a free one, or the oldest; if nothing changed, nothing is written.
	 */
	if (!ctx->sk)
		return SYS_PROCEED;
	if (!st)
		st = bpf_sk_storage_get(&lb_sock, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return SYS_PROCEED; /* out of memory: translated, but not remembered */
	if (!sendmsg) {
		rev_fill(&st->slots[0], &key, svc_id, bid, &be);
#pragma unroll
		for (i = 1; i < LB_REV_SLOTS; i++)
			st->slots[i].family = 0;
		st->next = 1;
		return SYS_PROCEED;
	}
#pragma unroll
	for (i = 0; i < LB_REV_SLOTS; i++) {
		s = &st->slots[i];
		if (s->family == 0) {
			if (empty < 0)
				empty = i;
			continue;
		}
		if (slot < 0 && s->family == key.family && s->proto == key.proto && s->fe_port == key.port &&
		    addr_eq(s->fe_addr, key.addr))
			slot = i;
	}
	if (slot >= 0) {
		s = &st->slots[slot & (LB_REV_SLOTS - 1)];
		if (s->svc_id == svc_id && s->backend_id == bid && s->be_port == be.port &&
		    addr_eq(s->be_addr, be.addr))
			return SYS_PROCEED;
	} else if (empty >= 0) {
		slot = empty;
	} else {
		slot = st->next % LB_REV_SLOTS;
		st->next++;
	}
	rev_fill(&st->slots[slot & (LB_REV_SLOTS - 1)], &key, svc_id, bid, &be);
	return SYS_PROCEED;
}

/* recvmsg4/6 and getpeername4/6: a backend's address becomes the service's. */
static __always_inline int lb_rev(struct bpf_sock_addr *ctx, bool v6)
{
	__u8 addr[16] __attribute__((aligned(4)));
	__u8 family;
	__be16 port;
	bool mapped;
	struct sock_state *st;

	if (!ctx->sk)
		return SYS_PROCEED;
	st = bpf_sk_storage_get(&lb_sock, ctx->sk, 0, 0);
	if (!st)
		return SYS_PROCEED;
	ctx_addr(ctx, v6, addr, &family, &mapped);
	port = (__be16)ctx->user_port;
#pragma unroll
	for (int i = 0; i < LB_REV_SLOTS; i++) {
		struct rev_slot s;

		__builtin_memcpy(&s, &st->slots[i], sizeof(s));
		if (s.family != family || s.be_port != port || !addr_eq(s.be_addr, addr))
			continue;
		ctx_set(ctx, v6, mapped, s.fe_addr, s.fe_port);
		break;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	return lb_fwd(ctx, false, false);
}

SEC("cgroup/connect6")
int lb_connect6(struct bpf_sock_addr *ctx)
{
	return lb_fwd(ctx, true, false);
}

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return lb_fwd(ctx, false, true);
}

SEC("cgroup/sendmsg6")
int lb_sendmsg6(struct bpf_sock_addr *ctx)
{
	return lb_fwd(ctx, true, true);
}

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return lb_rev(ctx, false);
}

SEC("cgroup/recvmsg6")
int lb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return lb_rev(ctx, true);
}

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx)
{
	return lb_rev(ctx, false);
}

SEC("cgroup/getpeername6")
int lb_getpeername6(struct bpf_sock_addr *ctx)
{
	return lb_rev(ctx, true);
}
