//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The pod datapath of warp-veth pods in routed (L3) mode. It runs on the
 * host end of a pod's veth, which receives every packet the pod sends, as
 * one of two programs per pod. Both work per pod (the warp_ifaces entry of
 * the interface they run on): they drop packets whose source MAC or IP is
 * not the pod's (anti-spoofing), forward packets themselves where they can,
 * and count what they passed, forwarded ("redirected") and dropped, in
 * packets and bytes per CPU. Packets on an interface with no warp_ifaces
 * entry pass untouched.
 *
 * warp_xdp_host (native XDP): redirects IPv4/IPv6 packets addressed to
 * another local XDP pod straight to that pod's host-side veth
 * (DEVMAP_HASH), doing what the kernel's forwarding path would do: rewrite
 * MACs, decrement TTL / hop limit. warp_xdp_pod is a no-op for the pod end:
 * a veth only runs NAPI (and so can receive the xdp_frames XDP_REDIRECT
 * produces) when an XDP program is attached to the receiving end. Both are
 * "xdp.frags" programs: they only look at headers, which are always in the
 * first buffer, and declaring multi-buffer support lifts veth's limit on
 * the peer MTU (about 3.5 KB for single-buffer programs).
 *
 * warp_tc_host (tcx ingress): works on the skb, which keeps GSO and its
 * checksum state. A packet to another local pod that takes part in a fast
 * path goes into that pod's namespace with bpf_redirect_peer (skipping the
 * node's routing, netfilter and the backlog queue); a packet to an address
 * in warp_neigh_dsts (the cluster's pod CIDRs, which are never masqueraded)
 * whose route has a gateway goes to that next hop with bpf_redirect_neigh;
 * everything else goes to the stack unchanged (TCX_NEXT, so programs after
 * ours on the same hook still run). It is written against the skb only, so
 * the same code could run as a netkit program (see bpf/README.md).
 */
#include "uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "pod.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/*
 * Hash maps are not preallocated: entries are only ever added from user
 * space, and preallocating 64 Ki per-CPU counters would cost memory
 * proportional to the number of CPUs for pods that do not exist.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct iface);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_key);
	__type(value, struct ip_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, __u32); /* ifindex */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_devmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_counters SEC(".maps");

/* Destinations warp_tc_host may hand to their next hop itself. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_NEIGH_DSTS);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__type(key, struct lpm_key);
	__type(value, __u32); /* reserved, 0 */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_neigh_dsts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta); /* pinset.h */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warp_meta SEC(".maps");

/* ARP for IPv4 over Ethernet, the only kind a pod may send. */
struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 sip[4];
	__u8 tha[ETH_ALEN];
	__u8 tip[4];
} __attribute__((packed));

/*
 * What check() finds out about a packet from a pod. CHK_SHORT: a header it
 * needs is not in the linear data (XDP: malformed; tc: pull and look again).
 */
enum { CHK_PASS, CHK_DROP, CHK_FWD, CHK_SHORT };

/* Enough linear data for Ethernet + IPv4 with options (or IPv6) + UDP. */
#define HDR_PULL (14 + 60 + 8)

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) |
		(a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

/* owned_by reports whether the address in k is registered to ifindex. */
static __always_inline int owned_by(const struct ip_key *k, __u32 ifindex)
{
	struct ip_val *v = bpf_map_lookup_elem(&warp_ips, k);

	return v && v->ifindex == ifindex;
}

/* what: CHK_PASS, CHK_DROP or CHK_FWD (forwarded by either program). */
static __always_inline void account(__u32 ifindex, int what, __u64 bytes)
{
	struct counters *c = bpf_map_lookup_elem(&warp_counters, &ifindex);

	if (!c)
		return;
	switch (what) {
	case CHK_FWD:
		c->redirect_packets++;
		c->redirect_bytes += bytes;
		break;
	case CHK_DROP:
		c->drop_packets++;
		c->drop_bytes += bytes;
		break;
	default:
		c->pass_packets++;
		c->pass_bytes += bytes;
	}
}

static __always_inline int check_arp(void *data_end, struct ethhdr *eth,
				     const struct iface *ifc, __u32 ifindex)
{
	struct arp_eth *arp = (void *)(eth + 1);
	struct ip_key k = {.family = WARP_FAMILY_V4};

	if ((void *)(arp + 1) > data_end)
		return CHK_SHORT;
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4)
		return CHK_DROP;
	if (!mac_eq(arp->sha, ifc->pod_mac))
		return CHK_DROP;
	if ((arp->sip[0] | arp->sip[1] | arp->sip[2] | arp->sip[3]) == 0)
		return CHK_PASS; /* ARP probe (RFC 5227) */
	__builtin_memcpy(k.addr, arp->sip, 4);
	return owned_by(&k, ifindex) ? CHK_PASS : CHK_DROP;
}

/*
 * is_dhcp_client: 1 if ip carries UDP 68 -> 67 (unfragmented), 0 if not,
 * -1 if the UDP header is not in the linear data.
 */
static __always_inline int is_dhcp_client(void *data_end, struct iphdr *ip)
{
	struct udphdr *udp;

	if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
		return 0;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return -1;
	return udp->source == bpf_htons(68) && udp->dest == bpf_htons(67);
}

/*
 * check_ipv4 applies anti-spoofing to an IPv4 packet and reports CHK_FWD
 * (with the destination in dst) when the program may forward it itself:
 * the pod has the fast path on (fwd_flag), the packet is routed through
 * the host end (its destination MAC) and its TTL allows another hop.
 */
static __always_inline int check_ipv4(void *data_end, struct ethhdr *eth, const struct iface *ifc,
				      __u32 ifindex, __u32 fwd_flag, struct ip_key *dst)
{
	struct iphdr *ip = (void *)(eth + 1);
	int antispoof = ifc->flags & F_ANTISPOOF;
	struct ip_key k = {.family = WARP_FAMILY_V4};

	if ((void *)(ip + 1) > data_end)
		return antispoof ? CHK_SHORT : CHK_PASS;
	if (ip->version != 4 || ip->ihl < 5)
		return antispoof ? CHK_DROP : CHK_PASS;
	if (ip->saddr == 0) {
		/* DHCP client before it has an address; never forwarded. */
		if (!antispoof)
			return CHK_PASS;
		switch (is_dhcp_client(data_end, ip)) {
		case 1:
			return CHK_PASS;
		case -1:
			return CHK_SHORT;
		default:
			return CHK_DROP;
		}
	}
	if (antispoof) {
		__builtin_memcpy(k.addr, &ip->saddr, 4);
		if (!owned_by(&k, ifindex))
			return CHK_DROP;
	}
	if (!(ifc->flags & fwd_flag) || !mac_eq(eth->h_dest, ifc->host_mac))
		return CHK_PASS;
	if (ip->ttl <= 1)
		return CHK_PASS; /* the stack sends ICMP time exceeded */
	if (ip->ihl != 5)
		return CHK_PASS; /* options: the forwarding path processes them */
	dst->family = WARP_FAMILY_V4;
	__builtin_memcpy(dst->addr, &ip->daddr, 4);
	return CHK_FWD;
}

static __always_inline int check_ipv6(void *data_end, struct ethhdr *eth, const struct iface *ifc,
				      __u32 ifindex, __u32 fwd_flag, struct ip_key *dst)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	int antispoof = ifc->flags & F_ANTISPOOF;
	struct ip_key k = {.family = WARP_FAMILY_V6};
	const __u8 *src;

	if ((void *)(ip6 + 1) > data_end)
		return antispoof ? CHK_SHORT : CHK_PASS;
	if (ip6->version != 6)
		return antispoof ? CHK_DROP : CHK_PASS;
	src = ip6->saddr.in6_u.u6_addr8;
	/*
	 * Unspecified source (DAD, MLD before an address exists) and
	 * link-local sources (ND, MLD, RS) are legitimate on the link; the
	 * kernel never forwards them, so neither do we.
	 */
	if ((ip6->saddr.in6_u.u6_addr32[0] | ip6->saddr.in6_u.u6_addr32[1] |
	     ip6->saddr.in6_u.u6_addr32[2] | ip6->saddr.in6_u.u6_addr32[3]) == 0 ||
	    (src[0] == 0xfe && (src[1] & 0xc0) == 0x80))
		return CHK_PASS;
	if (antispoof) {
		__builtin_memcpy(k.addr, src, 16);
		if (!owned_by(&k, ifindex))
			return CHK_DROP;
	}
	if (!(ifc->flags & fwd_flag) || !mac_eq(eth->h_dest, ifc->host_mac))
		return CHK_PASS;
	if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
		return CHK_PASS; /* multicast: never a pod address */
	if (ip6->hop_limit <= 1)
		return CHK_PASS; /* the stack sends ICMPv6 time exceeded */
	if (ip6->nexthdr == 0)
		return CHK_PASS; /* hop-by-hop options: for every node on the path */
	dst->family = WARP_FAMILY_V6;
	__builtin_memcpy(dst->addr, ip6->daddr.in6_u.u6_addr8, 16);
	return CHK_FWD;
}

/*
 * check runs the per-pod checks on the frame at data (the same for both
 * programs; fwd_flag is the flag that turns the program's fast path on).
 */
static __always_inline int check(void *data, void *data_end, const struct iface *ifc,
				 __u32 ifindex, __u32 fwd_flag, struct ip_key *dst)
{
	struct ethhdr *eth = data;
	int antispoof = ifc->flags & F_ANTISPOOF;

	if ((void *)(eth + 1) > data_end)
		return antispoof ? CHK_SHORT : CHK_PASS;
	if (antispoof && !mac_eq(eth->h_source, ifc->pod_mac))
		return CHK_DROP;

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return check_ipv4(data_end, eth, ifc, ifindex, fwd_flag, dst);
	case bpf_htons(ETH_P_IPV6):
		return check_ipv6(data_end, eth, ifc, ifindex, fwd_flag, dst);
	case bpf_htons(ETH_P_ARP):
		return antispoof ? check_arp(data_end, eth, ifc, ifindex) : CHK_PASS;
	default:
		/*
		 * VLAN-tagged or other protocols: nothing a routed pod
		 * legitimately sends, and they would bypass the checks above.
		 */
		return antispoof ? CHK_DROP : CHK_PASS;
	}
}

/*
 * dec_ttl does the forwarding path's TTL / hop limit decrement on a packet
 * check() accepted for forwarding (so TTL > 1); IPv4's header checksum is
 * updated incrementally (RFC 1624, ip_decrease_ttl()), which keeps the
 * header's ones'-complement sum, and with it a CHECKSUM_COMPLETE skb's
 * csum, unchanged.
 */
static __always_inline void dec_ttl(struct ethhdr *eth, void *data_end)
{
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 check;

		if ((void *)(ip + 1) > data_end)
			return;
		check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xFFFF));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return;
		ip6->hop_limit--;
	}
}

/* --- XDP --- */

/*
 * xdp_redirect sends the frame to the pod that owns dst (if it is a local
 * pod with the XDP fast path, other than the sender), rewriting the
 * Ethernet header as the kernel's neighbour output would. It returns
 * XDP_PASS when the packet should take the normal path instead, before
 * modifying anything.
 */
static __always_inline int xdp_redirect(struct xdp_md *ctx, const struct ip_key *dst, __u32 src_ifindex)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct ip_val *owner = bpf_map_lookup_elem(&warp_ips, dst);
	struct iface *to;
	__u32 l3len;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (!owner || owner->ifindex == src_ifindex)
		return XDP_PASS;
	to = bpf_map_lookup_elem(&warp_ifaces, &owner->ifindex);
	if (!to || !(to->flags & F_REDIRECT))
		return XDP_PASS;
	/*
	 * Too big for the destination: let the stack fragment it or send
	 * ICMP "fragmentation needed" / "packet too big".
	 */
	l3len = bpf_xdp_get_buff_len(ctx) - sizeof(struct ethhdr);
	if (bpf_check_mtu(ctx, owner->ifindex, &l3len, 0, 0) != 0)
		return XDP_PASS;
	if (bpf_redirect_map(&warp_devmap, owner->ifindex, XDP_PASS) != XDP_REDIRECT)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, to->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, to->host_mac, ETH_ALEN);
	dec_ttl(eth, data_end);
	return XDP_REDIRECT;
}

SEC("xdp.frags")
int warp_xdp_host(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct iface *ifc = bpf_map_lookup_elem(&warp_ifaces, &ifindex);
	struct ip_key dst = {};
	__u64 bytes;
	int what;

	if (!ifc)
		return XDP_PASS; /* not (or no longer) a registered pod */
	if (ifc->flags & F_TC)
		return XDP_PASS; /* served by warp_tc_host */
	bytes = bpf_xdp_get_buff_len(ctx); /* before a redirect rewrites anything */
	what = check((void *)(long)ctx->data, (void *)(long)ctx->data_end, ifc, ifindex, F_REDIRECT, &dst);
	if (what == CHK_SHORT)
		what = CHK_DROP; /* headers are always in an XDP frame's first buffer */
	if (what == CHK_FWD && xdp_redirect(ctx, &dst, ifindex) != XDP_REDIRECT)
		what = CHK_PASS;
	account(ifindex, what, bytes);
	switch (what) {
	case CHK_FWD:
		return XDP_REDIRECT;
	case CHK_DROP:
		return XDP_DROP;
	default:
		return XDP_PASS;
	}
}

SEC("xdp.frags")
int warp_xdp_pod(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* --- tc --- */

/*
 * tc_to_pod delivers the packet into the namespace of the local pod whose
 * host end is to_ifindex, if that pod takes part in a fast path (a tc pod
 * with F_PEER, or an XDP pod with F_REDIRECT: both chose to skip the node's
 * forwarding path) and the packet fits its MTU (GSO packets: each
 * segment). TCX_NEXT: the stack delivers it.
 */
static __always_inline int tc_to_pod(struct __sk_buff *skb, __u32 to_ifindex)
{
	struct iface *to = bpf_map_lookup_elem(&warp_ifaces, &to_ifindex);
	void *data_end, *data;
	struct ethhdr *eth;
	__u32 mtu_len = 0;

	if (!to || !(to->flags & (F_PEER | F_REDIRECT)))
		return TCX_NEXT;
	if (bpf_check_mtu(skb, to_ifindex, &mtu_len, 0, BPF_MTU_CHK_SEGS) != BPF_MTU_CHK_RET_SUCCESS)
		return TCX_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TCX_NEXT;
	__builtin_memcpy(eth->h_dest, to->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, to->host_mac, ETH_ALEN);
	dec_ttl(eth, data_end);
	return bpf_redirect_peer(to_ifindex, 0);
}

/*
 * tc_to_next_hop sends a packet for dst (in warp_neigh_dsts) to the next
 * hop of its route, when the route has a gateway (another node, a tunnel's
 * remote end): the FIB lookup is the forwarding path's own, and
 * bpf_redirect_neigh fills in the MACs from the neighbour table. A
 * destination on a connected network (a pod on this node the datapath does
 * not serve, say) and every lookup that does not plainly succeed (too big,
 * forwarding off, unreachable, ...) go to the stack, which also answers
 * with the right ICMP error.
 */
static __always_inline int tc_to_next_hop(struct __sk_buff *skb, const struct ip_key *dst)
{
	struct lpm_key lk = {.prefixlen = 8 * sizeof(struct ip_key), .ip = *dst};
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	void *data_end, *data;
	struct ethhdr *eth;
	__u32 daddr[4] = {};
	long rc;

	if (!bpf_map_lookup_elem(&warp_neigh_dsts, &lk))
		return TCX_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TCX_NEXT;
	fib.ifindex = skb->ifindex;
	if (dst->family == WARP_FAMILY_V4) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return TCX_NEXT;
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = daddr[0] = ip->daddr;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TCX_NEXT;
		fib.family = AF_INET6;
		fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
		fib.l4_protocol = ip6->nexthdr;
		__builtin_memcpy(fib.ipv6_src, ip6->saddr.in6_u.u6_addr32, 16);
		__builtin_memcpy(daddr, ip6->daddr.in6_u.u6_addr32, 16);
		__builtin_memcpy(fib.ipv6_dst, daddr, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TCX_NEXT;
	if (fib.ifindex == skb->ifindex)
		return TCX_NEXT; /* back where it came from: the stack's business */
	/* The lookup replaced the destination with the route's gateway, if any. */
	if (dst->family == WARP_FAMILY_V4) {
		if (fib.family != AF_INET || fib.ipv4_dst == daddr[0])
			return TCX_NEXT; /* on-link, or a gateway of another family */
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
	} else {
		if (fib.family != AF_INET6 ||
		    ((fib.ipv6_dst[0] ^ daddr[0]) | (fib.ipv6_dst[1] ^ daddr[1]) |
		     (fib.ipv6_dst[2] ^ daddr[2]) | (fib.ipv6_dst[3] ^ daddr[3])) == 0)
			return TCX_NEXT;
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TCX_NEXT;
	dec_ttl(eth, data_end);
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

static __always_inline int tc_check(struct __sk_buff *skb, const struct iface *ifc, __u32 ifindex,
				    struct ip_key *dst)
{
	/*
	 * A VLAN tag taken out of the frame by the veth's offload: the frame
	 * itself looks untagged, but it is not plain IP or ARP.
	 */
	if (skb->vlan_present)
		return (ifc->flags & F_ANTISPOOF) ? CHK_DROP : CHK_PASS;
	return check((void *)(long)skb->data, (void *)(long)skb->data_end, ifc, ifindex, F_PEER, dst);
}

SEC("tcx/ingress")
int warp_tc_host(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct iface *ifc = bpf_map_lookup_elem(&warp_ifaces, &ifindex);
	struct ip_key dst = {};
	__u64 bytes = skb->len; /* GSO packets: all their segments */
	int what, verdict = TCX_NEXT;

	if (!ifc || !(ifc->flags & F_TC))
		return TCX_NEXT; /* not (or no longer) a registered tc pod */
	what = tc_check(skb, ifc, ifindex, &dst);
	if (what == CHK_SHORT) {
		/* Headers beyond the linear data: make them linear, look again. */
		__u32 len = skb->len < HDR_PULL ? skb->len : HDR_PULL;

		what = CHK_DROP;
		if (bpf_skb_pull_data(skb, len) == 0) {
			what = tc_check(skb, ifc, ifindex, &dst);
			if (what == CHK_SHORT)
				what = CHK_DROP; /* truncated */
		}
	}
	if (what == CHK_FWD) {
		struct ip_val *owner = bpf_map_lookup_elem(&warp_ips, &dst);

		if (owner)
			verdict = owner->ifindex == ifindex ? TCX_NEXT : tc_to_pod(skb, owner->ifindex);
		else
			verdict = tc_to_next_hop(skb, &dst);
		if (verdict != TCX_REDIRECT)
			what = CHK_PASS;
	}
	account(ifindex, what, bytes);
	return what == CHK_DROP ? TCX_DROP : verdict;
}
