/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts of the north-south load balancer (nodeport.c), mirrored by
 * the Go types bpf2go generates (npFeKey, npSvc, ...). Every struct is laid
 * out without implicit padding. Changing a struct or the meaning of a field
 * needs a new layoutVersion in nodeport.go.
 */
#ifndef WARP_NODEPORT_H
#define WARP_NODEPORT_H

#include "pinset.h"

/* Default capacities (Go's DefaultSizes; Open sets the real ones). */
#define NP_MAX_FRONTENDS 65536
#define NP_MAX_SERVICES 65536
#define NP_MAX_BACKENDS 65536
#define NP_MAX_CONNS 131072
#define NP_MAX_IFACES 4096
#define NP_MAX_TUNNEL_PEERS 4096
#define NP_MAX_STATS 65536
/* The template of the Maglev tables; each table has its own size (np_svc). */
#define NP_MAGLEV_TEMPLATE 251

/* BPF_MAP_CREATE flag (linux/bpf.h): inner maps of any size. */
#define BPF_F_INNER_MAP (1U << 12)

/*
 * np_frontends: a frontend as clients reach it from outside the cluster
 * (a node address with a NodePort, a local ExternalIP, a LoadBalancer
 * ingress IP), keyed like the packet's destination.
 */
struct np_fe_key {
	__u8 addr[16]; /* pinset.h encoding */
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* WARP_FAMILY_V4 / _V6 */
};

/* A service: one Kubernetes service port in one address family. */
struct np_svc_key {
	__u32 id;
	__u8 family;
	__u8 pad[3];
};

struct np_fe {
	struct np_svc_key svc;
};

/* np_svc.flags */
#define NP_SVC_DSR (1 << 0)    /* remote backends answer the client directly */
#define NP_SVC_LOCAL (1 << 1)  /* externalTrafficPolicy: Local */
#define NP_SVC_RANDOM (1 << 2) /* random backend per flow instead of Maglev */

struct np_svc {
	__u32 flags;
	__u32 count;      /* backends; 0 drops */
	__u32 table_size; /* entries of the service's Maglev table (a prime) */
	__u32 pad;
};

/* np_backends: backend id → address; the id is only valid for svc_id. */
struct np_backend {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 svc_id;
};

/* np_ifaces: the interfaces the programs run on, and what they are. */
#define NP_IF_EXTERNAL 1 /* where clients from outside arrive: frontends apply */
#define NP_IF_POD 2      /* a pod's host-side veth: its replies pass here */
#define NP_IF_TUNNEL 3   /* the cluster network's VXLAN device */
#define NP_IF_OTHER 4    /* anything else (SR-IOV uplinks, ...) */

struct np_iface {
	__u32 role;
};

/* np_tunnels: a peer's VTEP MAC (the tunnel device's neighbour) → its
 * underlay address, so that the programs encapsulate themselves. */
struct np_tunnel_key {
	__u8 mac[6];
	__u8 pad[2];
};

struct np_tunnel {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* np_config[0] */
#define NP_CFG_TUNNEL (1 << 0) /* encapsulate to tunnel peers (VNI, port, MAC set) */

struct np_cfg {
	__u32 flags;
	__u16 snat_min; /* SNAT port range, host order */
	__u16 snat_max;
	__u32 vni;
	__be16 vxlan_port;
	__u8 vtep_mac[6]; /* this node's VTEP MAC: the inner source */
	/* idle timeouts in seconds */
	__u32 tcp_syn;
	__u32 tcp_established;
	__u32 tcp_closing;
	__u32 udp;
};

/*
 * np_conns: warpnet's own connection tracking (no netfilter conntrack).
 *
 * NP_CT_FWD, on the node a client reached: key = the client's packet as it
 * arrives (client → frontend); addr1:port1 is the backend, addr2:port2 the
 * SNAT address and port (NP_CT_SNAT).
 *
 * NP_CT_REV, wherever a reply must be translated back: key = the reply as
 * it arrives (backend → SNAT address, or backend → client when the client
 * address was kept); the reply leaves with source addr1:port1 (the
 * frontend) and destination addr2:port2 (the client).
 */
#define NP_CT_FWD 0
#define NP_CT_REV 1

struct np_ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 dir;
	__u8 pad;
};

/* np_ct.state: what the entry's direction has seen (TCP); picks the timeout */
#define NP_ST_NEW 0
#define NP_ST_ESTABLISHED 1
#define NP_ST_CLOSING 2

/* np_ct.flags */
#define NP_CT_SNAT (1 << 0)
#define NP_CT_DSR (1 << 1)
#define NP_CT_LOCAL (1 << 2)   /* the backend is a pod of this node */
#define NP_CT_TUNNEL (1 << 3)  /* encapsulated to the backend's node */
#define NP_CT_BACKEND (1 << 4) /* DSR: kept on the backend's node */

struct np_ct {
	__u64 created;   /* bpf_ktime_get_coarse_ns */
	__u64 last_seen; /* idem */
	__u8 addr1[16];
	__u8 addr2[16];
	__be16 port1;
	__be16 port2;
	__u32 backend_id;
	__u32 svc_id;
	__u8 family;
	__u8 state;
	__u8 flags;
	__u8 pad;
};

/* np_stats: per service (id 0: none known) and verdict, per CPU */
enum np_verdict {
	NP_V_LOCAL,         /* to a backend on this node */
	NP_V_SNAT,          /* to a remote backend, source translated */
	NP_V_DSR,           /* to a remote backend, DSR */
	NP_V_TUNNEL,        /* ... encapsulated (counted besides SNAT or DSR) */
	NP_V_REPLY,         /* a reply translated back to the client */
	NP_V_DSR_RESTORE,   /* backend's node: a DSR flow delivered to its pod */
	NP_V_NO_BACKEND,    /* dropped: the service has no backend */
	NP_V_NO_PORT,       /* dropped: no SNAT port free */
	NP_V_TOO_BIG,       /* answered with ICMP fragmentation needed / too big */
	NP_V_FRAGMENT,      /* an IP fragment to a frontend, passed to the stack */
	NP_V_ERROR,         /* dropped: a helper failed */
	NP_V_XDP_DEFERRED,  /* XDP left the packet to the tc program */
	NP_V_MAX,
};

struct np_stat_key {
	__u32 svc_id;
	__u8 family;
	__u8 verdict;
	__u8 pad[2];
};

struct np_stat {
	__u64 packets;
	__u64 bytes;
};

/*
 * DSR: the first packet of a flow (TCP SYN; every UDP packet) carries the
 * frontend to the backend's node: an IPv4 option (RFC 4727 experimental
 * value, copied on fragmentation), or an IPv6 destination option (RFC 4727
 * experimental, "skip if unknown") in a destination-options header.
 */
#define NP_DSR_OPT4 0x9e    /* copy 1, class 0, number 30 */
#define NP_DSR_OPT4_LEN 8   /* type, length, port, address */
#define NP_DSR_OPT6 0x1e    /* act 00, chg 0, number 30 */
#define NP_DSR_OPT6_LEN 18  /* address, port */
#define NP_DSR_EXT6_LEN 24  /* next, length, option, PadN(0) */

#endif
