/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts shared by pod.c and, through bpf2go's generated types, by
 * the Go API in this package (pod_bpfel.go). Every struct is laid out
 * without implicit padding, so that the Go types bpf2go generates have the
 * same size and the bytes the kernel hashes as keys are all explicit.
 *
 * Changing any of these structs (or the meaning of a field) changes the
 * layout of a pinned map: bump layoutVersion in datapath.go, so that Open
 * refuses to reuse maps written by an older build instead of misreading
 * them. The capacities below are mirrored by constants in datapath.go; a
 * test keeps them equal.
 */
#ifndef WARP_POD_H
#define WARP_POD_H

#include "pinset.h"

#define MAX_ENDPOINTS 65536
#define MAX_IPS (4 * MAX_ENDPOINTS)
#define MAX_IPS_PER_ENDPOINT 8
#define MAX_NEIGH_DSTS 1024

/*
 * iface.flags / endpoint.flags. F_REDIRECT is the XDP fast path: the pod
 * end runs XDP, so XDP may redirect frames to the pod. F_TC says that the
 * host end runs the tc program instead of the XDP one, and F_PEER that the
 * tc program forwards the pod's packets itself and other pods' tc programs
 * may deliver to it (bpf_redirect_peer). A tc pod never has F_REDIRECT: its
 * pod end has no XDP program and would drop redirected xdp_frames.
 */
#define F_REDIRECT (1U << 0)
#define F_ANTISPOOF (1U << 1)
#define F_TC (1U << 2)
#define F_PEER (1U << 3)

/* Key of warp_ips: an address as pinset.h encodes it. */
struct ip_key {
	__u8 family; /* WARP_FAMILY_V4 or WARP_FAMILY_V6 */
	__u8 pad[3]; /* always zero: part of the hashed key */
	__u8 addr[16];
};

/* Value of warp_ips: which pod (host-side ifindex) owns the address. */
struct ip_val {
	__u32 ifindex;
	__u32 pad;
	__u64 owner;
};

/* Value of warp_ifaces, keyed by host-side ifindex (__u32). */
struct iface {
	__u8 pod_mac[6];
	__u8 host_mac[6];
	__u32 flags;
	__u64 owner;
};

/*
 * Value of warp_endpoints, keyed by owner (__u64). The programs never read
 * it: it is the Go side's record of everything one endpoint wrote, written
 * first and deleted last, so that RemoveEndpoint finds every entry of an
 * owner even after the veth is gone or a plugin died half-way.
 */
struct endpoint {
	__u32 host_ifindex;
	__u32 flags;
	__u8 pod_mac[6];
	__u8 host_mac[6];
	__u32 n_ips;
	struct ip_key ips[MAX_IPS_PER_ENDPOINT];
};

/*
 * Key of warp_neigh_dsts (LPM trie): prefixlen counts the bits of ip,
 * family and padding included, so an IPv4 /24 is 32 + 24.
 */
struct lpm_key {
	__u32 prefixlen;
	struct ip_key ip;
};

/* Per-CPU value of warp_counters, keyed by host-side ifindex (__u32). */
struct counters {
	__u64 pass_packets;
	__u64 pass_bytes;
	__u64 redirect_packets;
	__u64 redirect_bytes;
	__u64 drop_packets;
	__u64 drop_bytes;
};

#endif
