/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts of the socket-level service load balancer (sock_lb.c, and
 * sock_iter.c which reads lb_sock), shared with the Go API through the
 * types bpf2go generates (lb_bpfel.go). Every struct is laid out without
 * implicit padding, so that the Go types have the same size and every byte
 * the kernel hashes as a key is explicit.
 *
 * Changing any of these structs (or the meaning of a field) changes the
 * layout of a pinned map: bump layoutVersion in lb.go, so that Open
 * rebuilds the maps (see Staged) instead of misreading those of an older build.
 *
 * The capacities below are defaults only: Open sets max_entries from
 * Sizes before it creates the maps.
 *
 * Addresses are encoded as pinset.h says (16 bytes and a WARP_FAMILY_*
 * byte). Ports are in network byte order, as the kernel hands them to the
 * programs.
 */
#ifndef WARP_SOCK_LB_H
#define WARP_SOCK_LB_H

#include "pinset.h"

#define LB_SERVICES 65536
#define LB_BACKENDS 65536
#define LB_AFFINITY 65536

/* Reverse translations remembered per socket (struct sock_state). */
#define LB_REV_SLOTS 4

/* lb_config.flags */
#define LB_CFG_HOST_ONLY (1U << 0)

/*
 * Key of lb_services. Slot 0 (gen 0) is the service's header; slots
 * 1..count of generation header.gen hold the ids of its backends, so that a
 * program picks a backend with one lookup of a random slot (Cilium's
 * layout). Updates are double-buffered: user space writes the backends and
 * the slots of the other generation, switches the header (one map update:
 * count, gen, affinity and id change together), and then deletes the old
 * generation's slots. A program that read the old header finds the old,
 * complete slots, or none at all (deleted meanwhile) and reads the header
 * again: no program ever sees a half-written service.
 */
struct svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* WARP_FAMILY_V4 or WARP_FAMILY_V6 */
	__u16 slot;  /* 0: header; 1..count: backend slots */
	__u16 gen;   /* header: 0; slots: 1 or 2 */
};

/* Value of lb_services: a header (slot 0) or a backend slot (slot > 0). */
struct svc {
	__u32 count;       /* header: number of backends; 0 rejects connections */
	__u32 backend_id;  /* slot: id of a backend in lb_backends */
	__u32 svc_id;      /* both: the caller's service id */
	__u32 affinity_ms; /* header: session affinity timeout, 0 = none */
	__u32 gen;         /* header: generation of the current slots (1 or 2) */
	__u32 flags;       /* reserved, zero */
};

/*
 * Value of lb_backends, keyed by backend id (__u32). A backend id belongs to
 * one service frontend; svc_id and family let a program verify that the id
 * it read (from an affinity entry, a socket's state, or a slot read while
 * the service was being updated) still names a backend of its service.
 */
struct backend {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 svc_id;
};

/* One reverse translation: the socket talks to be_* in place of fe_*. */
struct rev_slot {
	__u8 fe_addr[16];
	__u8 be_addr[16];
	__be16 fe_port;
	__be16 be_port;
	__u8 family; /* of both addresses; 0 = slot unused */
	__u8 proto;
	__u16 pad;
	__u32 svc_id;
	__u32 backend_id;
};

/*
 * Value of lb_sock, socket-local storage (BPF_MAP_TYPE_SK_STORAGE): the
 * translations of one socket, freed by the kernel with the socket. A
 * connected socket uses one slot; an unconnected UDP socket one per service
 * it sends to (the LB_REV_SLOTS most recent), which is also where its
 * backend choice is kept, so that it stays on one backend.
 */
struct sock_state {
	struct rev_slot slots[LB_REV_SLOTS];
	__u32 next; /* slot to reuse when all are taken (round robin) */
	__u32 pad;
};

/*
 * Key of lb_affinity: a client (its network namespace, i.e. the pod) and a
 * service. The client's address is not known yet when connect() runs; one
 * pod has one network namespace, which is what ClientIP affinity means.
 */
struct aff_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u8 family;
	__u8 proto;
	__u16 pad;
};

struct aff {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used; /* bpf_ktime_get_boot_ns() */
};

/* The single value of lb_config. */
struct config {
	__u32 flags;     /* LB_CFG_* */
	__u32 pad;
	__u64 host_netns; /* netns cookie of the host namespace (LB_CFG_HOST_ONLY) */
};

#endif
