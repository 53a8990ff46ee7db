//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * North-south load balancer: NodePort, ExternalIP and LoadBalancer traffic
 * from outside the cluster, per packet, without netfilter or its conntrack.
 *
 * One core (np_process) runs from two entry programs:
 *   np_xdp   XDP on the node's external interfaces (native mode);
 *   np_tc    tcx ingress on every interface of the node (external ones,
 *            pods' host-side veths, the tunnel device).
 * The core takes `xdp` as a compile-time constant; the few operations that
 * differ (loading and storing bytes, checksums, growing headers, sending)
 * are the ctx_* functions below. XDP finishes what it can send back out of
 * the interface it came in on (XDP_TX): new flows and replies of remote
 * backends, natively or encapsulated. Everything else (local backends, the
 * backend node's side of DSR, neighbours to resolve) XDP passes untouched,
 * and the tc program on the same interface does it.
 *
 * For a packet to a frontend, a backend is picked from the service's Maglev
 * table (or at random), remembered in np_conns, and the packet is translated:
 *   - backend on this node: destination only (the pod sees the client); the
 *     reply is translated back when it leaves the pod (np_tc on its veth);
 *   - remote backend, SNAT: source becomes this node's address and a port
 *     from the SNAT range; the reply comes back here;
 *   - remote backend, DSR: destination only, the frontend travels in an IP
 *     option; the backend's node restores it and its pod answers directly.
 * Remote backends behind the cluster's VXLAN tunnel are encapsulated here,
 * so that no packet of these flows crosses netfilter. A packet that would
 * exceed the path MTU once encapsulated (or given the DSR option) is
 * answered with ICMP "fragmentation needed" / "packet too big".
 */
#include <stdbool.h>

#include "uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "nodeport.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define ETH_HLEN 14
#define VXLAN_OVERHEAD (ETH_HLEN + 20 + 8 + 8) /* outer Ethernet, IPv4, UDP, VXLAN */
#define NP_SNAT_TRIES 16
#define NSEC_PER_SEC 1000000000ULL

/* --- maps --- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_fe_key);
	__type(value, struct np_fe);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_svc_key);
	__type(value, struct np_svc);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_services SEC(".maps");

struct np_maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NP_MAGLEV_TEMPLATE);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32); /* backend id */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, NP_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_svc_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct np_maglev_table);
} np_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct np_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NP_MAX_CONNS);
	__type(key, struct np_ct_key);
	__type(value, struct np_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_IFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* ifindex */
	__type(value, struct np_iface);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NP_MAX_TUNNEL_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_tunnel_key);
	__type(value, struct np_tunnel);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct np_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, NP_MAX_STATS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct np_stat_key);
	__type(value, struct np_stat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta); /* pinset.h */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_meta SEC(".maps");

/* --- the parsed packet --- */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct pkt {
	__u32 ifindex; /* ingress */
	__u32 len;     /* whole frame */
	__u32 l4off;
	__u16 l3len; /* IPv4 tot_len, IPv6 payload + 40 (host order) */
	__u8 family;
	__u8 proto;
	__u8 tcpflags;
	__u8 simple; /* no IPv4 options / IPv6 extension headers but ours */
	__u8 dsr;    /* carries our DSR option (NP_DSR_*) */
	__u8 df;     /* IPv4 DF */
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 dsr_addr[16];
	__be16 dsr_port;
	__u16 gso_seg; /* tc: the L3 length of each GSO segment, 0 if none */
};

/* bytes of the offending packet an ICMP error quotes (see too_big) */
#define QUOTE4 (20 + 20)
#define QUOTE6 (40 + 20)

/* room for what does not fit the 512-byte stack, per CPU (the programs
 * never nest on one CPU) */
struct scratch {
	struct pkt p;
	struct np_ct_key k;
	struct np_fe_key fe;
	struct np_ct ct;
	struct np_ct rv;
	struct np_ct_key fk;
	struct np_ct_key rk;
	struct bpf_fib_lookup f;
	struct bpf_fib_lookup outer;
	/* headers being built (ICMP errors) */
	struct {
		struct ipv6hdr ip6;
		struct icmp6hdr icmp;
		__u8 quote[QUOTE6];
	} icmp6;
	struct {
		__u8 saddr[16];
		__u8 daddr[16];
		__be32 len;
		__u8 zero[3];
		__u8 next;
	} ph;
	struct {
		struct iphdr ip;
		struct icmphdr icmp;
		__u8 quote[QUOTE4];
	} icmp4;
	/* a VXLAN header (outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet) */
	struct {
		struct ethhdr eth;
		struct iphdr ip;
		struct udphdr udp;
		__be32 vx_flags;
		__be32 vx_vni;
		struct ethhdr inner;
	} __attribute__((packed)) vxlan;
	/* DSR: the IPv4 header with the option, or the IPv6 header and the
	 * destination-options header */
	struct {
		struct iphdr ip;
		__u8 opt[NP_DSR_OPT4_LEN];
	} dsr4;
	struct {
		struct ipv6hdr ip6;
		__u8 ext[NP_DSR_EXT6_LEN];
	} dsr6;
	/* headers moved by ctx_grow (XDP) */
	__u8 move[ETH_HLEN + 40];
};

/* the map's value type is opaque (bpf2go cannot describe unions) */
struct scratch_bytes {
	__u8 b[sizeof(struct scratch)];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch_bytes);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_scratch SEC(".maps");

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&np_scratch, &zero);
}

/* what the core decided */
enum act {
	ACT_PASS,     /* untouched (or finished) to the stack / next program */
	ACT_DROP,
	ACT_TX,       /* back out of the ingress interface */
	ACT_REDIRECT, /* out of out_ifindex */
	ACT_NEIGH,    /* tc: out of out_ifindex, the kernel resolves nh */
};

struct out {
	__u32 ifindex;
	struct bpf_redir_neigh nh;
};

/* --- what differs between XDP and tc --- */

static __always_inline int ctx_load(void *ctx, const bool xdp, __u32 off, void *buf, __u32 len)
{
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, buf, len);
	return bpf_skb_load_bytes(ctx, off, buf, len);
}

static __always_inline int ctx_store(void *ctx, const bool xdp, __u32 off, const void *buf, __u32 len)
{
	if (xdp)
		return bpf_xdp_store_bytes(ctx, off, (void *)buf, len);
	return bpf_skb_store_bytes(ctx, off, buf, len, 0);
}

static __always_inline __u32 ctx_len(void *ctx, const bool xdp)
{
	if (xdp)
		return bpf_xdp_get_buff_len(ctx);
	return ((struct __sk_buff *)ctx)->len;
}

static __always_inline __u32 ctx_ifindex(void *ctx, const bool xdp)
{
	if (xdp)
		return ((struct xdp_md *)ctx)->ingress_ifindex;
	return ((struct __sk_buff *)ctx)->ifindex;
}

static __always_inline __u16 csum_fold(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	__u32 r = a + b;

	return r + (r < b);
}

/*
 * ctx_csum applies diff (the one's-complement sum of the new bytes less the
 * old) to the checksum at off: an L3 one, or an L4 one (pseudo: the
 * change is in the pseudo header). tc uses the kernel's helpers, which also
 * keep skb->csum and partial checksums right; XDP sees complete checksums
 * only (packets from a wire).
 */
static __always_inline int ctx_csum(void *ctx, const bool xdp, __u32 off, __u32 diff, bool l4, bool pseudo, bool udp)
{
	if (!xdp) {
		if (!l4)
			return bpf_l3_csum_replace(ctx, off, 0, diff, 0);
		return bpf_l4_csum_replace(ctx, off, 0, diff, (pseudo ? BPF_F_PSEUDO_HDR : 0) | (udp ? BPF_F_MARK_MANGLED_0 : 0));
	}
	__u16 check;

	if (ctx_load(ctx, xdp, off, &check, 2))
		return -1;
	if (udp && check == 0)
		return 0; /* IPv4 UDP without checksum */
	check = csum_fold(csum_add(diff, ~(__u32)check));
	if (udp && check == 0)
		check = 0xffff;
	return ctx_store(ctx, xdp, off, &check, 2);
}

/* ctx_grow inserts len bytes after the first keep bytes of the frame
 * (keep is ETH_HLEN: MAC layer, or ETH_HLEN + the fixed IP header: NET
 * layer); encap says the new bytes hold a VXLAN header (tc: GSO). */
static __always_inline int ctx_grow(void *ctx, const bool xdp, __u32 keep, int len, bool net, bool encap)
{
	if (!xdp) {
		__u64 flags = 0;

		if (encap)
			flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
				BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
		return bpf_skb_adjust_room(ctx, len, net ? BPF_ADJ_ROOM_NET : BPF_ADJ_ROOM_MAC, flags);
	}
	/* XDP: move the head, then the kept headers to the new front */
	struct scratch *s = scratch();
	__u8 *buf;

	if (!s)
		return -1;
	buf = s->move;
	if (len > 0) {
		if (bpf_xdp_adjust_head(ctx, -len))
			return -1;
		if (keep == ETH_HLEN) {
			if (ctx_load(ctx, xdp, len, buf, ETH_HLEN) || ctx_store(ctx, xdp, 0, buf, ETH_HLEN))
				return -1;
		} else if (keep == ETH_HLEN + 20) {
			if (ctx_load(ctx, xdp, len, buf, ETH_HLEN + 20) || ctx_store(ctx, xdp, 0, buf, ETH_HLEN + 20))
				return -1;
		} else if (keep == ETH_HLEN + 40) {
			if (ctx_load(ctx, xdp, len, buf, ETH_HLEN + 40) || ctx_store(ctx, xdp, 0, buf, ETH_HLEN + 40))
				return -1;
		} else {
			return -1;
		}
		return 0;
	}
	/* shrink: move the kept headers forward over the bytes removed */
	len = -len;
	if (keep == ETH_HLEN + 20) {
		if (ctx_load(ctx, xdp, 0, buf, ETH_HLEN + 20) || ctx_store(ctx, xdp, len, buf, ETH_HLEN + 20))
			return -1;
	} else if (keep == ETH_HLEN + 40) {
		if (ctx_load(ctx, xdp, 0, buf, ETH_HLEN + 40) || ctx_store(ctx, xdp, len, buf, ETH_HLEN + 40))
			return -1;
	} else {
		return -1;
	}
	return bpf_xdp_adjust_head(ctx, len);
}

/* ctx_truncate cuts the frame to len bytes. */
static __always_inline int ctx_truncate(void *ctx, const bool xdp, __u32 len)
{
	if (xdp)
		return bpf_xdp_adjust_tail(ctx, (int)len - (int)bpf_xdp_get_buff_len(ctx));
	return bpf_skb_change_tail(ctx, len, 0);
}

/* --- small things --- */

static __always_inline bool addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

static __always_inline void addr_cpy(__u8 *dst, const __u8 *src)
{
	__u32 *d = (__u32 *)dst;
	const __u32 *s = (const __u32 *)src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

static __always_inline struct np_cfg *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&np_config, &zero);
}

static __noinline void count(__u32 svc_id, __u8 family, __u8 verdict, __u32 bytes)
{
	struct np_stat_key k = {.svc_id = svc_id, .family = family, .verdict = verdict};
	struct np_stat *s = bpf_map_lookup_elem(&np_stats, &k);

	if (!s) {
		struct np_stat zero = {};

		bpf_map_update_elem(&np_stats, &k, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&np_stats, &k);
		if (!s)
			return;
	}
	s->packets++;
	s->bytes += bytes;
}

/* jhash (Bob Jenkins, as the kernel's linux/jhash.h) over 6 words */
#define rol32(w, s) (((w) << (s)) | ((w) >> (32 - (s))))
#define jhash_mix(a, b, c)                      \
	{                                       \
		a -= c; a ^= rol32(c, 4); c += b;   \
		b -= a; b ^= rol32(a, 6); a += c;   \
		c -= b; c ^= rol32(b, 8); b += a;   \
		a -= c; a ^= rol32(c, 16); c += b;  \
		b -= a; b ^= rol32(a, 19); a += c;  \
		c -= b; c ^= rol32(b, 4); b += a;   \
	}
#define jhash_final(a, b, c)                    \
	{                                       \
		c ^= b; c -= rol32(b, 14);          \
		a ^= c; a -= rol32(c, 11);          \
		b ^= a; b -= rol32(a, 25);          \
		c ^= b; c -= rol32(b, 16);          \
		a ^= c; a -= rol32(c, 4);           \
		b ^= a; b -= rol32(a, 14);          \
		c ^= b; c -= rol32(b, 24);          \
	}

/*
 * flow_hash picks the Maglev slot: client address and port, the
 * frontend's port and the protocol, but not the frontend's address, so
 * that a flow that lands on another node (a NodePort of another node
 * address, ECMP to a load balancer IP) gets the same slot there, and, the
 * tables being equal on every node, the same backend.
 */
static __always_inline __u32 flow_hash(const struct pkt *p)
{
	const __u32 *s = (const __u32 *)p->saddr;
	__u32 a, b, c;

	a = b = c = 0xdeadbeef + (6 << 2);
	a += s[0];
	b += s[1];
	c += s[2];
	jhash_mix(a, b, c);
	a += s[3];
	b += (__u32)p->sport | ((__u32)p->dport << 16);
	c += p->proto;
	jhash_final(a, b, c);
	return c;
}

/* --- connection tracking --- */

static __always_inline __u64 ct_timeout(const struct np_cfg *cfg, __u8 proto, __u8 state)
{
	__u32 s = cfg->udp;

	if (proto == IPPROTO_TCP) {
		if (state == NP_ST_ESTABLISHED)
			s = cfg->tcp_established;
		else if (state == NP_ST_CLOSING)
			s = cfg->tcp_closing;
		else
			s = cfg->tcp_syn;
	}
	return (__u64)s * NSEC_PER_SEC;
}

static __always_inline bool ct_alive(const struct np_ct *ct, const struct np_cfg *cfg, __u8 proto, __u64 now)
{
	return now - ct->last_seen <= ct_timeout(cfg, proto, ct->state);
}

/* ct_next is the state after the packet p in the entry's direction. */
static __always_inline __u8 ct_next(__u8 state, const struct pkt *p)
{
	if (p->proto != IPPROTO_TCP)
		return NP_ST_ESTABLISHED;
	if (p->tcpflags & (TCP_FIN | TCP_RST))
		return NP_ST_CLOSING;
	if (state == NP_ST_CLOSING)
		return state;
	if ((p->tcpflags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
		return NP_ST_NEW;
	return NP_ST_ESTABLISHED;
}

/* ct_touch refreshes an entry; the time is written at most once a second
 * (and at a state change), so that busy flows do not bounce cache lines. */
static __always_inline void ct_touch(struct np_ct *ct, const struct pkt *p, __u64 now)
{
	__u8 next = ct_next(ct->state, p);

	if (next != ct->state)
		ct->state = next;
	else if (now - ct->last_seen < NSEC_PER_SEC)
		return;
	ct->last_seen = now;
}

static __always_inline void ct_key_of(struct np_ct_key *k, const struct pkt *p, __u8 dir, bool swap)
{
	__builtin_memset(k, 0, sizeof(*k));
	addr_cpy(k->saddr, swap ? p->daddr : p->saddr);
	addr_cpy(k->daddr, swap ? p->saddr : p->daddr);
	k->sport = swap ? p->dport : p->sport;
	k->dport = swap ? p->sport : p->dport;
	k->proto = p->proto;
	k->family = p->family;
	k->dir = dir;
}

/* --- parsing --- */

enum parsed {
	P_OK,
	P_OTHER,    /* not for us: pass */
	P_FRAGMENT, /* an IP fragment */
};

static __always_inline int parse(void *ctx, const bool xdp, struct pkt *p)
{
	union {
		struct ethhdr eth;
		struct iphdr ip;
		struct ipv6hdr ip6;
		struct tcphdr th;
		struct udphdr uh;
		__u8 opt[NP_DSR_OPT4_LEN];
		__u8 ext[NP_DSR_EXT6_LEN];
	} h;
	__be16 l3proto;

	p->len = ctx_len(ctx, xdp);
	if (ctx_load(ctx, xdp, 0, &h.eth, sizeof(h.eth)))
		return P_OTHER;
	l3proto = h.eth.h_proto;
	if (l3proto == bpf_htons(ETH_P_IP)) {
		__u8 ihl;

		if (ctx_load(ctx, xdp, ETH_HLEN, &h.ip, sizeof(h.ip)) || h.ip.ihl < 5 || h.ip.version != 4)
			return P_OTHER;
		ihl = h.ip.ihl;
		p->family = WARP_FAMILY_V4;
		p->proto = h.ip.protocol;
		p->l3len = bpf_ntohs(h.ip.tot_len);
		p->df = !!(h.ip.frag_off & bpf_htons(IP_DF));
		__builtin_memcpy(p->saddr, &h.ip.saddr, 4);
		__builtin_memcpy(p->daddr, &h.ip.daddr, 4);
		if (h.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return P_FRAGMENT;
		p->l4off = ETH_HLEN + ihl * 4;
		p->simple = ihl == 5;
		if (ihl == 7 && !ctx_load(ctx, xdp, ETH_HLEN + 20, h.opt, sizeof(h.opt)) && h.opt[0] == NP_DSR_OPT4 &&
		    h.opt[1] == NP_DSR_OPT4_LEN) {
			p->dsr = 1;
			__builtin_memcpy(&p->dsr_port, &h.opt[2], 2);
			__builtin_memcpy(p->dsr_addr, &h.opt[4], 4);
		}
	} else if (l3proto == bpf_htons(ETH_P_IPV6)) {
		if (ctx_load(ctx, xdp, ETH_HLEN, &h.ip6, sizeof(h.ip6)) || h.ip6.version != 6)
			return P_OTHER;
		p->family = WARP_FAMILY_V6;
		p->proto = h.ip6.nexthdr;
		p->l3len = bpf_ntohs(h.ip6.payload_len) + 40;
		__builtin_memcpy(p->saddr, &h.ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &h.ip6.daddr, 16);
		p->l4off = ETH_HLEN + 40;
		p->simple = 1;
		if (p->proto == IPPROTO_FRAGMENT)
			return P_FRAGMENT;
		if (p->proto == IPPROTO_DSTOPTS) {
			if (ctx_load(ctx, xdp, ETH_HLEN + 40, h.ext, sizeof(h.ext)) || h.ext[1] != 2 ||
			    h.ext[2] != NP_DSR_OPT6 || h.ext[3] != NP_DSR_OPT6_LEN)
				return P_OTHER;
			p->dsr = 1;
			p->proto = h.ext[0];
			__builtin_memcpy(p->dsr_addr, &h.ext[4], 16);
			__builtin_memcpy(&p->dsr_port, &h.ext[20], 2);
			p->l4off += NP_DSR_EXT6_LEN;
			p->simple = 0;
		}
	} else {
		return P_OTHER;
	}
	if (p->proto == IPPROTO_TCP) {
		if (ctx_load(ctx, xdp, p->l4off, &h.th, sizeof(h.th)))
			return P_OTHER;
		p->sport = h.th.source;
		p->dport = h.th.dest;
		p->tcpflags = ((__u8 *)&h.th)[13];
		if (!xdp) {
			struct __sk_buff *skb = ctx;

			if (skb->gso_segs > 1 && skb->gso_size)
				p->gso_seg = p->l4off - ETH_HLEN + h.th.doff * 4 + skb->gso_size;
		}
	} else if (p->proto == IPPROTO_UDP) {
		if (ctx_load(ctx, xdp, p->l4off, &h.uh, sizeof(h.uh)))
			return P_OTHER;
		p->sport = h.uh.source;
		p->dport = h.uh.dest;
		if (!xdp) {
			struct __sk_buff *skb = ctx;

			if (skb->gso_segs > 1 && skb->gso_size)
				p->gso_seg = p->l4off - ETH_HLEN + 8 + skb->gso_size;
		}
	} else {
		return P_OTHER;
	}
	return P_OK;
}

/* --- rewriting --- */

static __always_inline __u32 l4_check_off(const struct pkt *p)
{
	return p->l4off + (p->proto == IPPROTO_TCP ? 16 : 6);
}

/*
 * nat sets the packet's source (src) or destination address and port,
 * fixing the IPv4 header checksum and the L4 checksum.
 */
static __always_inline int nat(void *ctx, const bool xdp, struct pkt *p, bool src, const __u8 *addr, __be16 port)
{
	__u8 *cur = src ? p->saddr : p->daddr;
	__be16 *cport = src ? &p->sport : &p->dport;
	bool udp = p->proto == IPPROTO_UDP;
	__u32 l4c = l4_check_off(p);

	if (!addr_eq(cur, addr)) {
		__u32 diff;

		if (p->family == WARP_FAMILY_V4) {
			__u32 off = ETH_HLEN + (src ? 12 : 16);

			diff = bpf_csum_diff((__be32 *)cur, 4, (__be32 *)addr, 4, 0);
			if (ctx_store(ctx, xdp, off, addr, 4) || ctx_csum(ctx, xdp, ETH_HLEN + 10, diff, false, false, false))
				return -1;
		} else {
			__u32 off = ETH_HLEN + (src ? 8 : 24);

			diff = bpf_csum_diff((__be32 *)cur, 16, (__be32 *)addr, 16, 0);
			if (ctx_store(ctx, xdp, off, addr, 16))
				return -1;
		}
		if (ctx_csum(ctx, xdp, l4c, diff, true, true, udp))
			return -1;
		addr_cpy(cur, addr);
	}
	if (*cport != port) {
		__u32 from = *cport, to = port;
		__u32 diff = bpf_csum_diff(&from, 4, &to, 4, 0);

		if (ctx_store(ctx, xdp, p->l4off + (src ? 0 : 2), &port, 2) || ctx_csum(ctx, xdp, l4c, diff, true, false, udp))
			return -1;
		*cport = port;
	}
	return 0;
}

static __always_inline int set_macs(void *ctx, const bool xdp, const __u8 *dst, const __u8 *src)
{
	__u8 macs[12];

	__builtin_memcpy(macs, dst, 6);
	__builtin_memcpy(macs + 6, src, 6);
	return ctx_store(ctx, xdp, 0, macs, 12);
}

static __always_inline __u16 ip_csum(const struct iphdr *ip)
{
	return csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

/* --- routing --- */

/*
 * route looks up how dst is reached from ifindex (the kernel's FIB and
 * neighbours): the egress interface and MACs, and, with want_src, the
 * source address the kernel would pick.
 */
static __always_inline int route(void *ctx, const bool xdp, struct bpf_fib_lookup *f, __u32 ifindex, __u8 family,
				 const __u8 *dst, bool want_src)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->ifindex = ifindex;
	/* a length that fits any MTU: the MTU is checked by the caller, for
	 * the packet as it will leave (tc would check the skb as it is) */
	f->tot_len = 1;
	if (family == WARP_FAMILY_V4) {
		f->family = AF_INET;
		__builtin_memcpy(&f->ipv4_dst, dst, 4);
	} else {
		f->family = AF_INET6;
		__builtin_memcpy(f->ipv6_dst, dst, 16);
	}
	return bpf_fib_lookup(ctx, f, sizeof(*f), want_src ? BPF_FIB_LOOKUP_SRC : 0);
}

static __always_inline __u32 role_of(__u32 ifindex)
{
	struct np_iface *i = bpf_map_lookup_elem(&np_ifaces, &ifindex);

	return i ? i->role : NP_IF_OTHER;
}

/* mtu_of is the MTU of ifindex. */
static __always_inline __u32 mtu_of(void *ctx, const bool xdp, __u32 ifindex)
{
	__u32 mtu = 1; /* a length to check; the helper returns the MTU */

	bpf_check_mtu(ctx, ifindex, &mtu, 0, 0);
	return mtu;
}

/* out_via fills how the packet leaves: its MACs from the FIB result (or,
 * in tc, the neighbour to resolve). XDP only sends back out of the
 * ingress interface, resolved. */
static __always_inline int out_via(void *ctx, const bool xdp, const struct pkt *p, int rc, const struct bpf_fib_lookup *f,
				   struct out *o)
{
	o->ifindex = f->ifindex;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (set_macs(ctx, xdp, f->dmac, f->smac))
			return -1;
		return f->ifindex == p->ifindex ? ACT_TX : ACT_REDIRECT;
	}
	/* BPF_FIB_LKUP_RET_NO_NEIGH */
	o->nh.nh_family = f->family;
	if (f->family == AF_INET)
		o->nh.ipv4_nh = f->ipv4_dst;
	else
		__builtin_memcpy(o->nh.ipv6_nh, f->ipv6_dst, 16);
	return ACT_NEIGH;
}

/* routable says whether a FIB result lets this hook send the packet: XDP
 * sends only back out of the interface it came in on, resolved. */
static __always_inline bool routable(const bool xdp, const struct pkt *p, int rc, const struct bpf_fib_lookup *f)
{
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return false;
	if (xdp)
		return rc == BPF_FIB_LKUP_RET_SUCCESS && f->ifindex == p->ifindex;
	return true;
}

/* --- ICMP "fragmentation needed" / "packet too big" --- */

/*
 * too_big turns the packet into the ICMP error that tells its sender the
 * path MTU (mtu, the largest IP packet that passes), sent back out of the
 * interface it came in on. The error quotes the packet's IP header and
 * the first 20 bytes of its payload (RFC 792 / 4443 require 8 at least):
 * a TCP segment sent by a local veth (CHECKSUM_PARTIAL) cannot be cut
 * shorter than its checksum field (bpf_skb_change_tail's minimum length).
 */
static __always_inline int too_big(void *ctx, const bool xdp, struct pkt *p, __u32 mtu)
{
	struct scratch *s = scratch();
	struct ethhdr eth;

	if (!s || ctx_load(ctx, xdp, 0, &eth, sizeof(eth)))
		return -1;
	if (p->family == WARP_FAMILY_V4) {
		/* eth | ip | icmp | quoted ip (20) | 20 bytes */
		typeof(s->icmp4) *h = &s->icmp4;

		if (!p->simple)
			return -1;
		__builtin_memset(h, 0, sizeof(*h));
		if (ctx_load(ctx, xdp, ETH_HLEN, h->quote, sizeof(h->quote)))
			return -1;
		if (ctx_truncate(ctx, xdp, ETH_HLEN + QUOTE4) || ctx_grow(ctx, xdp, ETH_HLEN, 28, false, false))
			return -1;
		h->ip.version = 4;
		h->ip.ihl = 5;
		h->ip.ttl = 64;
		h->ip.protocol = IPPROTO_ICMP;
		h->ip.tot_len = bpf_htons(20 + 8 + QUOTE4);
		__builtin_memcpy(&h->ip.saddr, p->daddr, 4);
		__builtin_memcpy(&h->ip.daddr, p->saddr, 4);
		h->ip.check = ip_csum(&h->ip);
		h->icmp.type = ICMP_DEST_UNREACH;
		h->icmp.code = ICMP_FRAG_NEEDED;
		h->icmp.un.frag.mtu = bpf_htons(mtu);
		h->icmp.checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h->icmp, 8 + QUOTE4, 0));
		if (ctx_store(ctx, xdp, ETH_HLEN, h, sizeof(*h)))
			return -1;
	} else {
		/* eth | ip6 | icmp6 | quoted ip6 (40) | 20 bytes */
		typeof(s->icmp6) *h = &s->icmp6;
		typeof(s->ph) *ph = &s->ph;
		__u32 sum;

		__builtin_memset(h, 0, sizeof(*h));
		__builtin_memset(ph, 0, sizeof(*ph));
		if (ctx_load(ctx, xdp, ETH_HLEN, h->quote, sizeof(h->quote)))
			return -1;
		if (ctx_truncate(ctx, xdp, ETH_HLEN + QUOTE6) || ctx_grow(ctx, xdp, ETH_HLEN, 48, false, false))
			return -1;
		h->ip6.version = 6;
		h->ip6.nexthdr = IPPROTO_ICMPV6;
		h->ip6.hop_limit = 64;
		h->ip6.payload_len = bpf_htons(8 + QUOTE6);
		__builtin_memcpy(&h->ip6.saddr, p->daddr, 16);
		__builtin_memcpy(&h->ip6.daddr, p->saddr, 16);
		h->icmp.icmp6_type = ICMPV6_PKT_TOOBIG;
		h->icmp.icmp6_mtu = bpf_htonl(mtu);
		__builtin_memcpy(ph->saddr, p->daddr, 16);
		__builtin_memcpy(ph->daddr, p->saddr, 16);
		ph->len = bpf_htonl(8 + QUOTE6);
		ph->next = IPPROTO_ICMPV6;
		sum = bpf_csum_diff(0, 0, (__be32 *)ph, sizeof(*ph), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&h->icmp, 8 + QUOTE6, sum);
		h->icmp.icmp6_cksum = csum_fold(sum);
		if (ctx_store(ctx, xdp, ETH_HLEN, h, sizeof(*h)))
			return -1;
	}
	/* back to where it came from */
	return set_macs(ctx, xdp, eth.h_source, eth.h_dest);
}

/* --- DSR --- */

/* dsr_insert adds the frontend to the packet (p->simple). */
static __always_inline int dsr_insert(void *ctx, const bool xdp, struct pkt *p, const __u8 *fe_addr, __be16 fe_port)
{
	struct scratch *s = scratch();

	if (!s)
		return -1;
	if (p->family == WARP_FAMILY_V4) {
		typeof(s->dsr4) *h = &s->dsr4;

		if (ctx_grow(ctx, xdp, ETH_HLEN + 20, NP_DSR_OPT4_LEN, true, false) ||
		    ctx_load(ctx, xdp, ETH_HLEN, &h->ip, sizeof(h->ip)))
			return -1;
		h->opt[0] = NP_DSR_OPT4;
		h->opt[1] = NP_DSR_OPT4_LEN;
		__builtin_memcpy(&h->opt[2], &fe_port, 2);
		__builtin_memcpy(&h->opt[4], fe_addr, 4);
		h->ip.ihl = 7;
		h->ip.tot_len = bpf_htons(bpf_ntohs(h->ip.tot_len) + NP_DSR_OPT4_LEN);
		h->ip.check = 0;
		/* the header checksum covers the option too */
		h->ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)h, sizeof(*h), 0));
		if (ctx_store(ctx, xdp, ETH_HLEN, h, sizeof(*h)))
			return -1;
		p->l4off += NP_DSR_OPT4_LEN;
		p->len += NP_DSR_OPT4_LEN;
		p->l3len += NP_DSR_OPT4_LEN;
		return 0;
	}
	typeof(s->dsr6) *h = &s->dsr6;

	if (ctx_grow(ctx, xdp, ETH_HLEN + 40, NP_DSR_EXT6_LEN, true, false) ||
	    ctx_load(ctx, xdp, ETH_HLEN, &h->ip6, sizeof(h->ip6)))
		return -1;
	__builtin_memset(h->ext, 0, sizeof(h->ext));
	h->ext[0] = h->ip6.nexthdr;
	h->ext[1] = 2; /* (24 - 8) / 8 */
	h->ext[2] = NP_DSR_OPT6;
	h->ext[3] = NP_DSR_OPT6_LEN;
	__builtin_memcpy(&h->ext[4], fe_addr, 16);
	__builtin_memcpy(&h->ext[20], &fe_port, 2);
	h->ext[22] = 1; /* PadN, length 0 */
	h->ip6.nexthdr = IPPROTO_DSTOPTS;
	h->ip6.payload_len = bpf_htons(bpf_ntohs(h->ip6.payload_len) + NP_DSR_EXT6_LEN);
	if (ctx_store(ctx, xdp, ETH_HLEN, h, sizeof(*h)))
		return -1;
	p->l4off += NP_DSR_EXT6_LEN;
	p->len += NP_DSR_EXT6_LEN;
	p->l3len += NP_DSR_EXT6_LEN;
	return 0;
}

/* dsr_strip removes the frontend the packet carries (p->dsr). */
static __always_inline int dsr_strip(void *ctx, const bool xdp, struct pkt *p)
{
	if (p->family == WARP_FAMILY_V4) {
		struct iphdr ip;

		if (ctx_grow(ctx, xdp, ETH_HLEN + 20, -NP_DSR_OPT4_LEN, true, false) ||
		    ctx_load(ctx, xdp, ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		ip.ihl = 5;
		ip.tot_len = bpf_htons(bpf_ntohs(ip.tot_len) - NP_DSR_OPT4_LEN);
		ip.check = 0;
		ip.check = ip_csum(&ip);
		if (ctx_store(ctx, xdp, ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		p->l4off -= NP_DSR_OPT4_LEN;
		p->len -= NP_DSR_OPT4_LEN;
		p->l3len -= NP_DSR_OPT4_LEN;
	} else {
		struct ipv6hdr ip6;

		if (ctx_grow(ctx, xdp, ETH_HLEN + 40, -NP_DSR_EXT6_LEN, true, false) ||
		    ctx_load(ctx, xdp, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		ip6.nexthdr = p->proto;
		ip6.payload_len = bpf_htons(bpf_ntohs(ip6.payload_len) - NP_DSR_EXT6_LEN);
		if (ctx_store(ctx, xdp, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		p->l4off -= NP_DSR_EXT6_LEN;
		p->len -= NP_DSR_EXT6_LEN;
		p->l3len -= NP_DSR_EXT6_LEN;
	}
	p->dsr = 0;
	return 0;
}

/* --- VXLAN --- */

/*
 * encap wraps the frame for the peer whose VTEP MAC the tunnel route
 * resolved (inner), to be sent as outer (the FIB result for the peer's
 * underlay address, with ipv4_dst set back to that address): the same
 * VXLAN the cluster network's device speaks (VNI, port, MACs), so the
 * peer's device decapsulates it.
 */
static __always_inline int encap(void *ctx, const bool xdp, struct pkt *p, const struct np_cfg *cfg,
				 struct scratch *s, __u32 hash)
{
	typeof(s->vxlan) *h = &s->vxlan;
	const struct bpf_fib_lookup *inner = &s->f, *outer = &s->outer;
	__u32 len = p->len; /* the inner frame */
	struct iphdr ip = {};

	if (ctx_grow(ctx, xdp, ETH_HLEN, VXLAN_OVERHEAD, false, true))
		return -1;
	__builtin_memset(h, 0, sizeof(*h));
	__builtin_memcpy(h->eth.h_dest, outer->dmac, 6);
	__builtin_memcpy(h->eth.h_source, outer->smac, 6);
	h->eth.h_proto = bpf_htons(ETH_P_IP);
	ip.version = 4;
	ip.ihl = 5;
	ip.ttl = 64;
	ip.protocol = IPPROTO_UDP;
	ip.frag_off = bpf_htons(IP_DF);
	ip.tot_len = bpf_htons(len + 20 + 8 + 8);
	ip.saddr = outer->ipv4_src;
	ip.daddr = outer->ipv4_dst;
	ip.check = ip_csum(&ip);
	__builtin_memcpy(&h->ip, &ip, sizeof(ip));
	/* a source port per flow, as the kernel's VXLAN picks, spreads the
	 * peer's receive queues */
	h->udp.source = bpf_htons(32768 + (hash % 28232));
	h->udp.dest = cfg->vxlan_port;
	h->udp.len = bpf_htons(len + 8 + 8);
	h->vx_flags = bpf_htonl(0x08000000); /* I: the VNI is valid */
	h->vx_vni = bpf_htonl(cfg->vni << 8);
	__builtin_memcpy(h->inner.h_dest, inner->dmac, 6);
	__builtin_memcpy(h->inner.h_source, cfg->vtep_mac, 6);
	h->inner.h_proto = p->family == WARP_FAMILY_V4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	return ctx_store(ctx, xdp, 0, h, sizeof(*h));
}

/*
 * The rare, stack-hungry steps run as subprograms, each with a stack frame
 * of its own, one copy per hook so that `xdp` stays a constant.
 */
static __noinline int too_big_xdp(struct xdp_md *ctx, struct pkt *p, __u32 mtu) { return too_big(ctx, true, p, mtu); }
static __noinline int too_big_tc(struct __sk_buff *ctx, struct pkt *p, __u32 mtu) { return too_big(ctx, false, p, mtu); }
static __noinline int dsr_insert_xdp(struct xdp_md *ctx, struct pkt *p, const __u8 *a, __be16 port)
{
	return dsr_insert(ctx, true, p, a, port);
}
static __noinline int dsr_insert_tc(struct __sk_buff *ctx, struct pkt *p, const __u8 *a, __be16 port)
{
	return dsr_insert(ctx, false, p, a, port);
}
static __noinline int dsr_strip_tc(struct __sk_buff *ctx, struct pkt *p) { return dsr_strip(ctx, false, p); }
static __noinline int encap_xdp(struct xdp_md *ctx, struct pkt *p, const struct np_cfg *cfg, struct scratch *s,
				__u32 hash)
{
	return encap(ctx, true, p, cfg, s, hash);
}
static __noinline int encap_tc(struct __sk_buff *ctx, struct pkt *p, const struct np_cfg *cfg, struct scratch *s,
			       __u32 hash)
{
	return encap(ctx, false, p, cfg, s, hash);
}
#define TOO_BIG(ctx, xdp, p, mtu) ((xdp) ? too_big_xdp(ctx, p, mtu) : too_big_tc(ctx, p, mtu))
#define DSR_INSERT(ctx, xdp, p, a, port) ((xdp) ? dsr_insert_xdp(ctx, p, a, port) : dsr_insert_tc(ctx, p, a, port))
#define ENCAP(ctx, xdp, p, cfg, s, hash) ((xdp) ? encap_xdp(ctx, p, cfg, s, hash) : encap_tc(ctx, p, cfg, s, hash))

/* --- the flows --- */

/*
 * reply translates a packet that answers a tracked flow (rev: its
 * NP_CT_REV entry) back to the client, and sends it there.
 */
static __always_inline int reply(void *ctx, const bool xdp, struct pkt *p, struct np_ct *rev, __u64 now, struct out *o)
{
	struct scratch *s = scratch();
	int rc;

	if (!s)
		return ACT_PASS;
	rc = route(ctx, xdp, &s->f, p->ifindex, p->family, rev->addr2, false);
	if (!routable(xdp, p, rc, &s->f)) {
		if (xdp) {
			count(rev->svc_id, p->family, NP_V_XDP_DEFERRED, p->len);
			return ACT_PASS;
		}
		count(rev->svc_id, p->family, NP_V_ERROR, p->len);
		return ACT_DROP;
	}
	ct_touch(rev, p, now);
	if (nat(ctx, xdp, p, true, rev->addr1, rev->port1) || nat(ctx, xdp, p, false, rev->addr2, rev->port2)) {
		count(rev->svc_id, p->family, NP_V_ERROR, p->len);
		return ACT_DROP;
	}
	count(rev->svc_id, p->family, NP_V_REPLY, p->len);
	return out_via(ctx, xdp, p, rc, &s->f, o);
}

/*
 * deliver sends a packet that is already addressed to a pod of this node
 * (a DSR flow on the backend's node) straight to the pod's veth (tc only),
 * or to the stack if the pod is not on a veth.
 */
static __always_inline int deliver(void *ctx, const bool xdp, struct pkt *p, struct out *o)
{
	struct scratch *s = scratch();
	int rc;

	if (!s)
		return ACT_PASS;
	rc = route(ctx, xdp, &s->f, p->ifindex, p->family, p->daddr, false);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || role_of(s->f.ifindex) != NP_IF_POD)
		return ACT_PASS;
	return out_via(ctx, xdp, p, rc, &s->f, o);
}

/* dsr_restore keeps a DSR flow's frontend on the backend's node, for the
 * pod's replies, and delivers the packet without the option (tc). */
static __always_inline int dsr_restore(void *ctx, const bool xdp, struct pkt *p, const struct np_cfg *cfg, __u64 now,
				       struct out *o)
{
	struct scratch *s = scratch();
	struct np_ct *cur, *ct;

	if (xdp) {
		count(0, p->family, NP_V_XDP_DEFERRED, p->len);
		return ACT_PASS;
	}
	if (!s)
		return ACT_PASS;
	ct = &s->ct;
	ct_key_of(&s->rk, p, NP_CT_REV, true); /* as the pod's replies will look */
	cur = bpf_map_lookup_elem(&np_conns, &s->rk);
	if (cur && addr_eq(cur->addr1, p->dsr_addr) && cur->port1 == p->dsr_port && ct_alive(cur, cfg, p->proto, now)) {
		ct_touch(cur, p, now);
	} else {
		__builtin_memset(ct, 0, sizeof(*ct));
		ct->created = ct->last_seen = now;
		addr_cpy(ct->addr1, p->dsr_addr);
		ct->port1 = p->dsr_port;
		addr_cpy(ct->addr2, p->saddr);
		ct->port2 = p->sport;
		ct->family = p->family;
		ct->state = ct_next(NP_ST_NEW, p);
		ct->flags = NP_CT_DSR | NP_CT_BACKEND;
		bpf_map_update_elem(&np_conns, &s->rk, ct, BPF_ANY);
	}
	if (dsr_strip_tc(ctx, p)) {
		count(0, p->family, NP_V_ERROR, p->len);
		return ACT_DROP;
	}
	count(0, p->family, NP_V_DSR_RESTORE, p->len);
	return deliver(ctx, xdp, p, o);
}

/* snat_port reserves a port of the SNAT range for the reply entry rk/rv:
 * the client's own port if it is in the range and free (as netfilter's
 * SNAT prefers), else random ones. An entry of the same client flow, or
 * one that timed out, may be taken over. */
static __always_inline int snat_port(struct np_ct_key *rk, struct np_ct *rv, const struct np_cfg *cfg, __u64 now)
{
	__u32 lo = cfg->snat_min, hi = cfg->snat_max, n;
	__u32 port = bpf_ntohs(rv->port2);

	if (hi < lo || lo == 0)
		return -1;
	n = hi - lo + 1;
	if (port < lo || port > hi)
		port = lo + bpf_get_prandom_u32() % n;
	for (int i = 0; i < NP_SNAT_TRIES; i++) {
		rk->dport = bpf_htons(port);
		if (!bpf_map_update_elem(&np_conns, rk, rv, BPF_NOEXIST))
			return 0;
		struct np_ct *old = bpf_map_lookup_elem(&np_conns, rk);

		if (old && (!ct_alive(old, cfg, rk->proto, now) ||
			    (addr_eq(old->addr2, rv->addr2) && old->port2 == rv->port2 && addr_eq(old->addr1, rv->addr1) &&
			     old->port1 == rv->port1))) {
			bpf_map_update_elem(&np_conns, rk, rv, BPF_ANY);
			return 0;
		}
		port = lo + bpf_get_prandom_u32() % n;
	}
	return -1;
}

/* pick chooses a backend of the service for a new flow (or one whose
 * backend left). */
static __always_inline struct np_backend *pick(const struct pkt *p, const struct np_svc_key *sk, __u32 *id)
{
	struct np_svc *svc = bpf_map_lookup_elem(&np_services, sk);
	void *table;
	__u32 slot, *bid;
	struct np_backend *be;

	if (!svc || svc->count == 0 || svc->table_size == 0)
		return 0;
	table = bpf_map_lookup_elem(&np_maglev, sk);
	if (!table)
		return 0;
	if (svc->flags & NP_SVC_RANDOM)
		slot = bpf_get_prandom_u32() % svc->table_size;
	else
		slot = flow_hash(p) % svc->table_size;
	bid = bpf_map_lookup_elem(table, &slot);
	if (!bid)
		return 0;
	be = bpf_map_lookup_elem(&np_backends, bid);
	if (!be || be->svc_id != sk->id || be->family != sk->family)
		return 0;
	*id = *bid;
	return be;
}

/* is_first says whether the packet starts a flow for DSR's purpose: the
 * option rides on TCP SYNs and on every UDP packet (UDP has no start). */
static __always_inline bool is_first(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP || (p->tcpflags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

/*
 * frontend handles a packet to a frontend: the flow's backend (tracked, or
 * picked now), and the packet translated and sent toward it.
 */
static __always_inline int frontend(void *ctx, const bool xdp, struct pkt *p, const struct np_fe *fe,
				    const struct np_cfg *cfg, __u64 now, struct out *o)
{
	struct scratch *s = scratch();
	struct np_svc_key sk = fe->svc;
	struct np_ct *cur;
	struct np_backend *be = 0;
	struct np_svc *svc;
	__u32 bid = 0, erole, added = 0, hash = flow_hash(p);
	__be32 outer_nh = 0; /* tunnel: the next hop toward the peer */
	bool fresh, tunnel = false, dsr = false, snat = false, local;
	int rc, orc = 0;
	__u8 fe_addr[16] __attribute__((aligned(4)));
	__be16 fe_port = p->dport;

	if (!s)
		return ACT_PASS;
	addr_cpy(fe_addr, p->daddr);
	ct_key_of(&s->fk, p, NP_CT_FWD, false);
	cur = bpf_map_lookup_elem(&np_conns, &s->fk);
	fresh = !cur || !ct_alive(cur, cfg, p->proto, now) ||
		(p->proto == IPPROTO_TCP && (p->tcpflags & (TCP_SYN | TCP_ACK)) == TCP_SYN && cur->state != NP_ST_NEW);
	if (!fresh) {
		bid = cur->backend_id;
		be = bpf_map_lookup_elem(&np_backends, &bid);
		if (!be || be->svc_id != sk.id || be->family != sk.family) {
			be = 0; /* the backend left: the flow fails over */
			fresh = true;
		}
	}
	if (!be)
		be = pick(p, &sk, &bid);
	svc = bpf_map_lookup_elem(&np_services, &sk);
	if (!be || !svc) {
		count(sk.id, p->family, NP_V_NO_BACKEND, p->len);
		return ACT_DROP;
	}

	rc = route(ctx, xdp, &s->f, p->ifindex, p->family, be->addr, true);
	if (rc == BPF_FIB_LKUP_RET_NO_SRC_ADDR)
		rc = route(ctx, xdp, &s->f, p->ifindex, p->family, be->addr, false);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		goto error;
	erole = role_of(s->f.ifindex);
	local = erole == NP_IF_POD;
	if (!fresh) {
		dsr = cur->flags & NP_CT_DSR;
		snat = cur->flags & NP_CT_SNAT;
	} else if (!local) {
		dsr = (svc->flags & NP_SVC_DSR) && p->simple;
		snat = !dsr;
	}
	if (erole == NP_IF_TUNNEL) {
		struct np_tunnel_key tk = {};
		struct np_tunnel *peer;

		if (rc != BPF_FIB_LKUP_RET_SUCCESS || !(cfg->flags & NP_CFG_TUNNEL))
			goto error;
		__builtin_memcpy(tk.mac, s->f.dmac, 6);
		peer = bpf_map_lookup_elem(&np_tunnels, &tk);
		if (!peer || peer->family != WARP_FAMILY_V4)
			goto error;
		orc = route(ctx, xdp, &s->outer, p->ifindex, WARP_FAMILY_V4, peer->addr, true);
		if (orc != BPF_FIB_LKUP_RET_SUCCESS && orc != BPF_FIB_LKUP_RET_NO_NEIGH)
			goto error;
		/* the lookup left the next hop in ipv4_dst: a router when the
		 * peer is not on-link. The outer header goes to the peer */
		outer_nh = s->outer.ipv4_dst;
		__builtin_memcpy(&s->outer.ipv4_dst, peer->addr, 4);
		if (xdp && !routable(xdp, p, orc, &s->outer))
			goto defer;
		tunnel = true;
		added = VXLAN_OVERHEAD;
	} else if (xdp && (local || !routable(xdp, p, rc, &s->f))) {
		goto defer;
	}

	/* the path MTU, before anything is changed. GSO packets (tc) are
	 * cut into segments that fit when they leave: growing the headers
	 * shrinks their segment size */
	if (dsr && is_first(p))
		added += p->family == WARP_FAMILY_V4 ? NP_DSR_OPT4_LEN : NP_DSR_EXT6_LEN;
	if (!p->gso_seg) {
		__u32 mtu = mtu_of(ctx, xdp, tunnel ? s->outer.ifindex : s->f.ifindex);

		if (p->l3len + added > mtu) {
			count(sk.id, p->family, NP_V_TOO_BIG, p->len);
			if (p->family == WARP_FAMILY_V4 && !p->df)
				return ACT_DROP; /* the sender allows fragments; this path makes none */
			if (TOO_BIG(ctx, xdp, p, mtu - added))
				goto error;
			return ACT_TX;
		}
	}

	/* track the flow: its forward entry, and the entry its replies match */
	if (fresh) {
		struct np_ct *ct = &s->ct, *rv = &s->rv;
		struct np_ct_key *rk = &s->rk;

		__builtin_memset(ct, 0, sizeof(*ct));
		ct->created = ct->last_seen = now;
		addr_cpy(ct->addr1, be->addr);
		ct->port1 = be->port;
		ct->backend_id = bid;
		ct->svc_id = sk.id;
		ct->family = p->family;
		ct->state = ct_next(NP_ST_NEW, p);
		ct->flags = (local ? NP_CT_LOCAL : 0) | (dsr ? NP_CT_DSR : 0) | (snat ? NP_CT_SNAT : 0) |
			    (tunnel ? NP_CT_TUNNEL : 0);
		if (!dsr) {
			__builtin_memset(rv, 0, sizeof(*rv));
			rv->created = rv->last_seen = now;
			addr_cpy(rv->addr1, p->daddr);
			rv->port1 = p->dport;
			addr_cpy(rv->addr2, p->saddr);
			rv->port2 = p->sport;
			rv->svc_id = sk.id;
			rv->family = p->family;
			rv->state = NP_ST_NEW;
			rv->flags = ct->flags;
			__builtin_memset(rk, 0, sizeof(*rk));
			addr_cpy(rk->saddr, be->addr);
			rk->sport = be->port;
			rk->proto = p->proto;
			rk->family = p->family;
			rk->dir = NP_CT_REV;
			if (snat) {
				/* the source the kernel would pick for the backend */
				if (p->family == WARP_FAMILY_V4)
					__builtin_memcpy(rk->daddr, &s->f.ipv4_src, 4);
				else
					__builtin_memcpy(rk->daddr, s->f.ipv6_src, 16);
				if (snat_port(rk, rv, cfg, now)) {
					count(sk.id, p->family, NP_V_NO_PORT, p->len);
					return ACT_DROP;
				}
				addr_cpy(ct->addr2, rk->daddr);
				ct->port2 = rk->dport;
			} else {
				addr_cpy(rk->daddr, p->saddr);
				rk->dport = p->sport;
				bpf_map_update_elem(&np_conns, rk, rv, BPF_ANY);
			}
		}
		if (bpf_map_update_elem(&np_conns, &s->fk, ct, BPF_ANY))
			goto error;
		cur = ct;
	} else {
		ct_touch(cur, p, now);
	}

	/* translate */
	if (nat(ctx, xdp, p, false, cur->addr1, cur->port1) || (snat && nat(ctx, xdp, p, true, cur->addr2, cur->port2)))
		goto error;
	if (dsr && is_first(p) && DSR_INSERT(ctx, xdp, p, fe_addr, fe_port))
		goto error;
	count(sk.id, p->family, local ? NP_V_LOCAL : dsr ? NP_V_DSR : NP_V_SNAT, p->len);
	if (tunnel) {
		if (ENCAP(ctx, xdp, p, cfg, s, hash))
			goto error;
		count(sk.id, p->family, NP_V_TUNNEL, p->len);
		o->ifindex = s->outer.ifindex;
		if (orc == BPF_FIB_LKUP_RET_NO_NEIGH) {
			/* tc: the kernel resolves the peer's underlay neighbour */
			o->nh.nh_family = AF_INET;
			o->nh.ipv4_nh = outer_nh;
			return ACT_NEIGH;
		}
		return s->outer.ifindex == p->ifindex ? ACT_TX : ACT_REDIRECT;
	}
	return out_via(ctx, xdp, p, rc, &s->f, o);
defer:
	count(sk.id, p->family, NP_V_XDP_DEFERRED, p->len);
	return ACT_PASS;
error:
	count(sk.id, p->family, NP_V_ERROR, p->len);
	return ACT_DROP;
}

/* np_process is the core both entry programs run. */
static __always_inline int np_process(void *ctx, const bool xdp, struct out *o)
{
	struct scratch *s = scratch();
	struct pkt *p;
	struct np_iface *iface;
	struct np_cfg *cfg;
	struct np_ct *ct;
	__u32 ifindex = ctx_ifindex(ctx, xdp);
	__u64 now;
	int r;

	iface = bpf_map_lookup_elem(&np_ifaces, &ifindex);
	cfg = config();
	if (!iface || !cfg || !s)
		return ACT_PASS;
	p = &s->p;
	__builtin_memset(p, 0, sizeof(*p));
	p->ifindex = ifindex;
	r = parse(ctx, xdp, p);
	if (r == P_FRAGMENT && iface->role == NP_IF_EXTERNAL) {
		/* ports are in the first fragment only: fragments to
		 * frontends go to the stack, which drops what it cannot
		 * deliver, and no flow is ever half translated */
		count(0, p->family, NP_V_FRAGMENT, p->len);
		return ACT_PASS;
	}
	if (r != P_OK)
		return ACT_PASS;
	now = bpf_ktime_get_coarse_ns();

	/* a reply to translate back */
	ct_key_of(&s->k, p, NP_CT_REV, false);
	ct = bpf_map_lookup_elem(&np_conns, &s->k);
	if (ct && ct_alive(ct, cfg, p->proto, now))
		return reply(ctx, xdp, p, ct, now, o);

	/* the backend's node of a DSR flow */
	if (p->dsr)
		return dsr_restore(ctx, xdp, p, cfg, now, o);

	if (iface->role == NP_IF_EXTERNAL) {
		struct np_fe *fe;

		__builtin_memset(&s->fe, 0, sizeof(s->fe));
		addr_cpy(s->fe.addr, p->daddr);
		s->fe.port = p->dport;
		s->fe.proto = p->proto;
		s->fe.family = p->family;
		fe = bpf_map_lookup_elem(&np_frontends, &s->fe);
		if (fe)
			return frontend(ctx, xdp, p, fe, cfg, now, o);
	}

	/* the client's later packets of a DSR flow whose backend is here */
	if (!xdp && iface->role != NP_IF_POD) {
		ct_key_of(&s->k, p, NP_CT_REV, true);
		ct = bpf_map_lookup_elem(&np_conns, &s->k);
		if (ct && (ct->flags & NP_CT_BACKEND) && ct_alive(ct, cfg, p->proto, now)) {
			ct_touch(ct, p, now);
			return deliver(ctx, xdp, p, o);
		}
	}
	return ACT_PASS;
}

SEC("xdp.frags")
int np_xdp(struct xdp_md *ctx)
{
	struct out o = {};

	switch (np_process(ctx, true, &o)) {
	case ACT_DROP:
		return XDP_DROP;
	case ACT_TX:
		return XDP_TX;
	}
	return XDP_PASS;
}

SEC("tcx/ingress")
int np_tc(struct __sk_buff *ctx)
{
	struct out o = {};

	switch (np_process(ctx, false, &o)) {
	case ACT_DROP:
		return TCX_DROP;
	case ACT_TX:
		return bpf_redirect(ctx->ifindex, 0);
	case ACT_REDIRECT:
		return bpf_redirect(o.ifindex, 0);
	case ACT_NEIGH:
		return bpf_redirect_neigh(o.ifindex, &o.nh, sizeof(o.nh), 0);
	}
	return TCX_NEXT;
}
