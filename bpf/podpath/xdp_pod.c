//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP datapath for warp-veth pods in routed (L3) mode.
 *
 * warp_xdp_host runs in native mode on the host end of every pod veth, so it
 * sees every frame the pod sends. Per pod (warp_ifaces entry of the ingress
 * ifindex) it
 *   1. drops frames whose source MAC or IP is not the pod's (anti-spoofing),
 *   2. redirects IPv4/IPv6 packets addressed to another local pod straight to
 *      that pod's host-side veth (DEVMAP_HASH), doing what the kernel's
 *      forwarding path would do: rewrite MACs, decrement TTL / hop limit,
 *   3. counts passed, redirected and dropped packets and bytes per CPU.
 * Frames arriving on an interface with no warp_ifaces entry pass untouched.
 *
 * warp_xdp_pod is a no-op for the pod end. A veth only runs NAPI (and so
 * can receive xdp_frames from ndo_xdp_xmit, which is what XDP_REDIRECT into
 * the peer host end produces) when an XDP program is attached to the
 * receiving end: without it, redirected frames are dropped.
 *
 * Both are "xdp.frags" programs: they only look at headers, which are always
 * in the first buffer, and declaring multi-buffer support lifts veth's limit
 * on the peer MTU (about 3.5 KB for single-buffer programs), so jumbo-MTU
 * pods work.
 */
#include "uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdp_pod.h"

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

static __always_inline void account(__u32 ifindex, int verdict, __u64 bytes)
{
	struct counters *c = bpf_map_lookup_elem(&warp_counters, &ifindex);

	if (!c)
		return;
	switch (verdict) {
	case XDP_REDIRECT:
		c->redirect_packets++;
		c->redirect_bytes += bytes;
		break;
	case XDP_DROP:
		c->drop_packets++;
		c->drop_bytes += bytes;
		break;
	default:
		c->pass_packets++;
		c->pass_bytes += bytes;
	}
}

/*
 * redirect_to sends the frame to the pod that owns dst (if it is a local
 * pod with redirect enabled, other than the sender), rewriting the Ethernet
 * header as the kernel's neighbour output would. It returns XDP_PASS when
 * the packet should take the normal path instead; the caller then must not
 * have modified the packet, so the TTL is only decremented here, after every
 * check has passed.
 */
static __always_inline int redirect_to(struct xdp_md *ctx, struct ethhdr *eth,
				       const struct ip_key *dst, __u32 src_ifindex)
{
	struct ip_val *owner = bpf_map_lookup_elem(&warp_ips, dst);
	struct iface *to;
	__u32 l3len;

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
	return XDP_REDIRECT;
}

static __always_inline int handle_arp(void *data_end, struct ethhdr *eth,
				      const struct iface *ifc, __u32 ifindex)
{
	struct arp_eth *arp = (void *)(eth + 1);
	struct ip_key k = {.family = WARP_FAMILY_V4};

	if ((void *)(arp + 1) > data_end)
		return XDP_DROP;
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4)
		return XDP_DROP;
	if (!mac_eq(arp->sha, ifc->pod_mac))
		return XDP_DROP;
	if ((arp->sip[0] | arp->sip[1] | arp->sip[2] | arp->sip[3]) == 0)
		return XDP_PASS; /* ARP probe (RFC 5227) */
	__builtin_memcpy(k.addr, arp->sip, 4);
	return owned_by(&k, ifindex) ? XDP_PASS : XDP_DROP;
}

/* is_dhcp_client reports whether ip carries UDP 68 -> 67 (unfragmented). */
static __always_inline int is_dhcp_client(void *data_end, struct iphdr *ip)
{
	struct udphdr *udp;

	if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
		return 0;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return 0;
	return udp->source == bpf_htons(68) && udp->dest == bpf_htons(67);
}

static __always_inline int handle_ipv4(struct xdp_md *ctx, void *data_end, struct ethhdr *eth,
				       const struct iface *ifc, __u32 ifindex)
{
	struct iphdr *ip = (void *)(eth + 1);
	int antispoof = ifc->flags & F_ANTISPOOF;
	struct ip_key k = {.family = WARP_FAMILY_V4};
	__u32 check;
	int verdict;

	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return antispoof ? XDP_DROP : XDP_PASS;
	if (ip->saddr == 0) {
		/* DHCP client before it has an address; never forwarded. */
		if (antispoof && !is_dhcp_client(data_end, ip))
			return XDP_DROP;
		return XDP_PASS;
	}
	if (antispoof) {
		__builtin_memcpy(k.addr, &ip->saddr, 4);
		if (!owned_by(&k, ifindex))
			return XDP_DROP;
	}
	if (!(ifc->flags & F_REDIRECT) || !mac_eq(eth->h_dest, ifc->host_mac))
		return XDP_PASS;
	if (ip->ttl <= 1)
		return XDP_PASS; /* the stack sends ICMP time exceeded */

	__builtin_memset(k.addr, 0, sizeof(k.addr));
	__builtin_memcpy(k.addr, &ip->daddr, 4);
	verdict = redirect_to(ctx, eth, &k, ifindex);
	if (verdict != XDP_REDIRECT)
		return verdict;
	/* ip_decrease_ttl(): incremental checksum update (RFC 1624). */
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
	return XDP_REDIRECT;
}

static __always_inline int handle_ipv6(struct xdp_md *ctx, void *data_end, struct ethhdr *eth,
				       const struct iface *ifc, __u32 ifindex)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	int antispoof = ifc->flags & F_ANTISPOOF;
	struct ip_key k = {.family = WARP_FAMILY_V6};
	const __u8 *src;
	int verdict;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return antispoof ? XDP_DROP : XDP_PASS;
	src = ip6->saddr.in6_u.u6_addr8;
	/*
	 * Unspecified source (DAD, MLD before an address exists) and
	 * link-local sources (ND, MLD, RS) are legitimate on the link; the
	 * kernel never forwards them, so neither do we.
	 */
	if ((ip6->saddr.in6_u.u6_addr32[0] | ip6->saddr.in6_u.u6_addr32[1] |
	     ip6->saddr.in6_u.u6_addr32[2] | ip6->saddr.in6_u.u6_addr32[3]) == 0 ||
	    (src[0] == 0xfe && (src[1] & 0xc0) == 0x80))
		return XDP_PASS;
	if (antispoof) {
		__builtin_memcpy(k.addr, src, 16);
		if (!owned_by(&k, ifindex))
			return XDP_DROP;
	}
	if (!(ifc->flags & F_REDIRECT) || !mac_eq(eth->h_dest, ifc->host_mac))
		return XDP_PASS;
	if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
		return XDP_PASS; /* multicast: never a pod address */
	if (ip6->hop_limit <= 1)
		return XDP_PASS; /* the stack sends ICMPv6 time exceeded */

	__builtin_memcpy(k.addr, ip6->daddr.in6_u.u6_addr8, 16);
	verdict = redirect_to(ctx, eth, &k, ifindex);
	if (verdict != XDP_REDIRECT)
		return verdict;
	ip6->hop_limit--;
	return XDP_REDIRECT;
}

static __always_inline int process(struct xdp_md *ctx, const struct iface *ifc, __u32 ifindex)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	int antispoof = ifc->flags & F_ANTISPOOF;

	if ((void *)(eth + 1) > data_end)
		return antispoof ? XDP_DROP : XDP_PASS;
	if (antispoof && !mac_eq(eth->h_source, ifc->pod_mac))
		return XDP_DROP;

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(ctx, data_end, eth, ifc, ifindex);
	case bpf_htons(ETH_P_IPV6):
		return handle_ipv6(ctx, data_end, eth, ifc, ifindex);
	case bpf_htons(ETH_P_ARP):
		return antispoof ? handle_arp(data_end, eth, ifc, ifindex) : XDP_PASS;
	default:
		/*
		 * VLAN-tagged or other protocols: nothing a routed pod
		 * legitimately sends, and they would bypass the checks above.
		 */
		return antispoof ? XDP_DROP : XDP_PASS;
	}
}

SEC("xdp.frags")
int warp_xdp_host(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct iface *ifc = bpf_map_lookup_elem(&warp_ifaces, &ifindex);
	__u64 bytes;
	int verdict;

	if (!ifc)
		return XDP_PASS; /* not (or no longer) a registered pod */
	bytes = bpf_xdp_get_buff_len(ctx); /* before a redirect rewrites anything */
	verdict = process(ctx, ifc, ifindex);
	account(ifindex, verdict, bytes);
	return verdict;
}

SEC("xdp.frags")
int warp_xdp_pod(struct xdp_md *ctx)
{
	return XDP_PASS;
}
