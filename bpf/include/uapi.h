/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The few Linux UAPI definitions warpnet's BPF programs use, copied from the
 * kernel's include/uapi (linux/types.h, bpf.h, if_ether.h, in.h, in6.h,
 * ip.h, ipv6.h, udp.h, asm-generic/errno*.h, Linux 6.1) instead of including
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

/* linux/in.h */
enum {
	IPPROTO_TCP = 6,  /* Transmission Control Protocol */
	IPPROTO_UDP = 17, /* User Datagram Protocol */
};

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

#endif
