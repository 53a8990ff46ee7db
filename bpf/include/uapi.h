/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The few Linux UAPI definitions warpnet's BPF programs use, copied from the
 * kernel's include/uapi (linux/types.h, bpf.h, if_ether.h, in.h, in6.h,
 * ip.h, ipv6.h, udp.h, tcp.h, icmp.h, icmpv6.h, asm-generic/errno*.h, Linux
 * 6.1; BPF_FIB_LOOKUP_SRC and TCX_* from Linux 6.6; linux/socket.h's
 * AF_INET/AF_INET6) instead of including
 * the build machine's /usr/include: those pull in architecture directories
 * (asm/) whose location differs between distributions, and the programs must
 * build the same everywhere. Only definitions the programs (and libbpf's
 * bpf_helper_defs.h) use are here; values and layouts are the kernel's,
 * which keeps them stable (UAPI).
 */
#ifndef WARP_UAPI_H
#define WARP_UAPI_H

/* linux/types.h, asm-generic/int-ll64.h */
typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;

/* asm-generic/errno-base.h, asm-generic/errno.h */
#define ECONNREFUSED 111
#define EHOSTUNREACH 113

/* linux/bpf.h */
enum bpf_map_type {
	BPF_MAP_TYPE_UNSPEC,
	BPF_MAP_TYPE_HASH,
	BPF_MAP_TYPE_ARRAY,
	BPF_MAP_TYPE_PROG_ARRAY,
	BPF_MAP_TYPE_PERF_EVENT_ARRAY,
	BPF_MAP_TYPE_PERCPU_HASH,
	BPF_MAP_TYPE_PERCPU_ARRAY,
	BPF_MAP_TYPE_STACK_TRACE,
	BPF_MAP_TYPE_CGROUP_ARRAY,
	BPF_MAP_TYPE_LRU_HASH,
	BPF_MAP_TYPE_LRU_PERCPU_HASH,
	BPF_MAP_TYPE_LPM_TRIE,
	BPF_MAP_TYPE_ARRAY_OF_MAPS,
	BPF_MAP_TYPE_HASH_OF_MAPS,
	BPF_MAP_TYPE_DEVMAP,
	BPF_MAP_TYPE_SOCKMAP,
	BPF_MAP_TYPE_CPUMAP,
	BPF_MAP_TYPE_XSKMAP,
	BPF_MAP_TYPE_SOCKHASH,
	BPF_MAP_TYPE_CGROUP_STORAGE,
	BPF_MAP_TYPE_REUSEPORT_SOCKARRAY,
	BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
	BPF_MAP_TYPE_QUEUE,
	BPF_MAP_TYPE_STACK,
	BPF_MAP_TYPE_SK_STORAGE,
	BPF_MAP_TYPE_DEVMAP_HASH,
};

/* BPF_FUNC_l3_csum_replace and BPF_FUNC_l4_csum_replace flags.
 * First 4 bits are for passing the header field size.
 */
enum {
	BPF_F_HDR_FIELD_MASK = 0xfULL,
};

/* BPF_FUNC_l4_csum_replace flags. */
enum {
	BPF_F_PSEUDO_HDR = (1ULL << 4),
	BPF_F_MARK_MANGLED_0 = (1ULL << 5),
	BPF_F_MARK_ENFORCE = (1ULL << 6),
};

/* BPF_FUNC_skb_adjust_room flags. */
enum {
	BPF_F_ADJ_ROOM_FIXED_GSO = (1ULL << 0),
	BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 = (1ULL << 1),
	BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 = (1ULL << 2),
	BPF_F_ADJ_ROOM_ENCAP_L4_GRE = (1ULL << 3),
	BPF_F_ADJ_ROOM_ENCAP_L4_UDP = (1ULL << 4),
	BPF_F_ADJ_ROOM_NO_CSUM_RESET = (1ULL << 5),
	BPF_F_ADJ_ROOM_ENCAP_L2_ETH = (1ULL << 6),
};

enum {
	BPF_ADJ_ROOM_ENCAP_L2_MASK = 0xff,
	BPF_ADJ_ROOM_ENCAP_L2_SHIFT = 56,
};

#define BPF_F_ADJ_ROOM_ENCAP_L2(len) (((__u64)len & \
				       BPF_ADJ_ROOM_ENCAP_L2_MASK) \
				      << BPF_ADJ_ROOM_ENCAP_L2_SHIFT)

/* Mode for BPF_FUNC_skb_adjust_room helper. */
enum bpf_adj_room_mode {
	BPF_ADJ_ROOM_NET,
	BPF_ADJ_ROOM_MAC,
};

/* DIRECT:  Skip the FIB rules and go to FIB table associated with device
 * OUTPUT:  Do lookup from egress perspective; default is ingress
 */
enum {
	BPF_FIB_LOOKUP_DIRECT = (1U << 0),
	BPF_FIB_LOOKUP_OUTPUT = (1U << 1),
	BPF_FIB_LOOKUP_SKIP_NEIGH = (1U << 2),
	BPF_FIB_LOOKUP_TBID = (1U << 3),
	BPF_FIB_LOOKUP_SRC = (1U << 4),
};

enum {
	BPF_FIB_LKUP_RET_SUCCESS,      /* lookup successful */
	BPF_FIB_LKUP_RET_BLACKHOLE,    /* dest is blackholed; can be dropped */
	BPF_FIB_LKUP_RET_UNREACHABLE,  /* dest is unreachable; can be dropped */
	BPF_FIB_LKUP_RET_PROHIBIT,     /* dest not allowed; can be dropped */
	BPF_FIB_LKUP_RET_NOT_FWDED,    /* packet is not forwarded */
	BPF_FIB_LKUP_RET_FWD_DISABLED, /* fwding is not enabled on ingress */
	BPF_FIB_LKUP_RET_UNSUPP_LWT,   /* fwd requires encapsulation */
	BPF_FIB_LKUP_RET_NO_NEIGH,     /* no neighbor entry for nh */
	BPF_FIB_LKUP_RET_FRAG_NEEDED,  /* fragmentation required to fwd */
	BPF_FIB_LKUP_RET_NO_SRC_ADDR,  /* failed to derive IP src addr */
};

struct bpf_fib_lookup {
	/* input:  network family for lookup (AF_INET, AF_INET6)
	 * output: network family of egress nexthop
	 */
	__u8 family;

	/* set if lookup is to consider L4 data - e.g., FIB rules */
	__u8 l4_protocol;
	__be16 sport;
	__be16 dport;

	union { /* used for MTU check */
		/* input to lookup */
		__u16 tot_len; /* L3 length from network hdr (iph->tot_len) */

		/* output: MTU value */
		__u16 mtu_result;
	} __attribute__((packed, aligned(2)));
	/* input: L3 device index for lookup
	 * output: device index from FIB lookup
	 */
	__u32 ifindex;

	union {
		/* inputs to lookup */
		__u8 tos;        /* AF_INET  */
		__be32 flowinfo; /* AF_INET6, flow_label + priority */

		/* output: metric of fib result (IPv4/IPv6 only) */
		__u32 rt_metric;
	};

	/* input: source address to consider for lookup
	 * output: source address result from lookup
	 */
	union {
		__be32 ipv4_src;
		__u32 ipv6_src[4]; /* in6_addr; network order */
	};

	/* input to bpf_fib_lookup, ipv{4,6}_dst is destination address in
	 * network header. output: bpf_fib_lookup sets to gateway address
	 * if FIB lookup returns gateway route
	 */
	union {
		__be32 ipv4_dst;
		__u32 ipv6_dst[4]; /* in6_addr; network order */
	};

	union {
		struct {
			/* output */
			__be16 h_vlan_proto;
			__be16 h_vlan_TCI;
		};
		/* input: when accompanied with the
		 * 'BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID` flags, a
		 * specific routing table to use for the fib lookup.
		 */
		__u32 tbid;
	};

	__u8 smac[6]; /* ETH_ALEN */
	__u8 dmac[6]; /* ETH_ALEN */
};

struct bpf_redir_neigh {
	/* network family for lookup (AF_INET, AF_INET6) */
	__u32 nh_family;
	/* network address of nexthop; skips fib lookup to find gateway */
	union {
		__be32 ipv4_nh;
		__u32 ipv6_nh[4]; /* in6_addr; network order */
	};
};

/* bpf_check_mtu flags */
enum bpf_check_mtu_flags {
	BPF_MTU_CHK_SEGS = (1U << 0),
};

enum bpf_check_mtu_ret {
	BPF_MTU_CHK_RET_SUCCESS,     /* check and lookup successful */
	BPF_MTU_CHK_RET_FRAG_NEEDED, /* fragmentation required to fwd */
	BPF_MTU_CHK_RET_SEGS_TOOBIG, /* GSO re-segmentation needed to fwd */
};

/* flags for BPF_MAP_UPDATE_ELEM command */
enum {
	BPF_ANY = 0,     /* create new element or update existing */
	BPF_NOEXIST = 1, /* create new element if it didn't exist */
	BPF_EXIST = 2,   /* update existing element */
	BPF_F_LOCK = 4,  /* spin_lock-ed map_lookup/map_update */
};

/* flags for BPF_MAP_CREATE command */
enum {
	BPF_F_NO_PREALLOC = (1U << 0),
};

/* BPF_FUNC_sk_storage_get flags */
enum {
	BPF_SK_STORAGE_GET_F_CREATE = (1ULL << 0),
};

#define __bpf_md_ptr(type, name) \
	union {                  \
		type name;       \
		__u64 : 64;      \
	} __attribute__((aligned(8)))

struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	/* IP address also allows 1 and 2 bytes access */
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;   /* host byte order */
	__be16 dst_port;  /* network byte order */
	__u16 : 16;       /* zero padding */
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

struct bpf_flow_keys;

/* user accessible mirror of in-kernel sk_buff.
 * new fields can only be added to the end of this structure
 */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;

	/* Accessed by BPF_PROG_TYPE_sk_skb types from here to ... */
	__u32 family;
	__u32 remote_ip4;    /* Stored in network byte order */
	__u32 local_ip4;     /* Stored in network byte order */
	__u32 remote_ip6[4]; /* Stored in network byte order */
	__u32 local_ip6[4];  /* Stored in network byte order */
	__u32 remote_port;   /* Stored in network byte order */
	__u32 local_port;    /* stored in host byte order */
	/* ... here. */

	__u32 data_meta;
	__bpf_md_ptr(struct bpf_flow_keys *, flow_keys);
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	__bpf_md_ptr(struct bpf_sock *, sk);
	__u32 gso_size;
	__u8 tstamp_type;
	__u32 : 24; /* Padding, future use. */
	__u64 hwtstamp;
};

/* (Simplified) user return codes for tcx prog type.
 * A valid tcx program must return one of these defined values. All other
 * return codes are reserved for future use. Must remain compatible with
 * their TC_ACT_* counter-parts. For compatibility in behavior, unknown
 * return codes are mapped to TCX_NEXT.
 */
enum tcx_action_base {
	TCX_NEXT = -1,
	TCX_PASS = 0,
	TCX_DROP = 2,
	TCX_REDIRECT = 7,
};

enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP,
	XDP_PASS,
	XDP_TX,
	XDP_REDIRECT,
};

/* user accessible metadata for XDP packet hook */
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	/* Below access go through struct xdp_rxq_info */
	__u32 ingress_ifindex; /* rxq->dev->ifindex */
	__u32 rx_queue_index;  /* rxq->queue_index  */

	__u32 egress_ifindex; /* txq->dev->ifindex */
};

/* User bpf_sock_addr struct to access socket fields and sockaddr struct
 * passed by user and intended to be used by socket (e.g. to bind to,
 * depends on attach type).
 */
struct bpf_sock_addr {
	__u32 user_family;    /* Allows 4-byte read, but no write. */
	__u32 user_ip4;       /* Allows 1,2,4-byte read and 4-byte write.
			       * Stored in network byte order.
			       */
	__u32 user_ip6[4];    /* Allows 1,2,4,8-byte read and 4,8-byte write.
			       * Stored in network byte order.
			       */
	__u32 user_port;      /* Allows 1,2,4-byte read and 4-byte write.
			       * Stored in network byte order
			       */
	__u32 family;         /* Allows 4-byte read, but no write */
	__u32 type;           /* Allows 4-byte read, but no write */
	__u32 protocol;       /* Allows 4-byte read, but no write */
	__u32 msg_src_ip4;    /* Allows 1,2,4-byte read and 4-byte write.
			       * Stored in network byte order.
			       */
	__u32 msg_src_ip6[4]; /* Allows 1,2,4,8-byte read and 4,8-byte write.
			       * Stored in network byte order.
			       */
	__bpf_md_ptr(struct bpf_sock *, sk);
};

/* linux/if_ether.h */
#define ETH_ALEN 6         /* Octets in one ethernet addr */
#define ETH_P_IP 0x0800    /* Internet Protocol packet */
#define ETH_P_ARP 0x0806   /* Address Resolution packet */
#define ETH_P_IPV6 0x86DD  /* IPv6 over bluebook */

struct ethhdr {
	unsigned char h_dest[ETH_ALEN];   /* destination eth addr */
	unsigned char h_source[ETH_ALEN]; /* source ether addr */
	__be16 h_proto;                   /* packet type ID field */
} __attribute__((packed));

/* linux/in.h, linux/in6.h */
enum {
	IPPROTO_ICMP = 1,      /* Internet Control Message Protocol */
	IPPROTO_TCP = 6,       /* Transmission Control Protocol */
	IPPROTO_UDP = 17,      /* User Datagram Protocol */
	IPPROTO_FRAGMENT = 44, /* IPv6 fragmentation header */
	IPPROTO_ICMPV6 = 58,   /* ICMPv6 */
	IPPROTO_DSTOPTS = 60,  /* IPv6 destination options */
};

/* linux/socket.h */
#define AF_INET 2
#define AF_INET6 10

/* linux/in6.h */
struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
};

/* linux/ip.h */
struct iphdr {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	__u8 ihl : 4,
	     version : 4;
#else
	__u8 version : 4,
	     ihl : 4;
#endif
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

/* net/ip.h: the IPv4 flags (the wire format) */
#define IP_DF 0x4000     /* Flag: "Don't Fragment" */
#define IP_MF 0x2000     /* Flag: "More Fragments" */
#define IP_OFFSET 0x1FFF /* "Fragment Offset" part */

/* linux/ipv6.h */
struct ipv6hdr {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	__u8 priority : 4,
	     version : 4;
#else
	__u8 version : 4,
	     priority : 4;
#endif
	__u8 flow_lbl[3];

	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;

	struct in6_addr saddr;
	struct in6_addr daddr;
};

/* linux/udp.h */
struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};

/* linux/tcp.h */
struct tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	__u16 res1 : 4,
	      doff : 4,
	      fin : 1,
	      syn : 1,
	      rst : 1,
	      psh : 1,
	      ack : 1,
	      urg : 1,
	      ece : 1,
	      cwr : 1;
#else
	__u16 doff : 4,
	      res1 : 4,
	      cwr : 1,
	      ece : 1,
	      urg : 1,
	      ack : 1,
	      psh : 1,
	      rst : 1,
	      syn : 1,
	      fin : 1;
#endif
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

/* linux/icmp.h */
#define ICMP_DEST_UNREACH 3 /* Destination Unreachable */
#define ICMP_FRAG_NEEDED 4  /* Fragmentation Needed/DF set */

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 __unused;
			__be16 mtu;
		} frag;
		__u8 reserved[4];
	} un;
};

/* linux/icmpv6.h */
#define ICMPV6_PKT_TOOBIG 2

struct icmp6hdr {
	__u8 icmp6_type;
	__u8 icmp6_code;
	__sum16 icmp6_cksum;
	__be32 icmp6_mtu; /* the data union, as packet-too-big uses it */
};

#endif
