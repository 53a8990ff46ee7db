/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every warpnet BPF object shares, mirrored on the Go side by package
 * bpf/pinset (Meta, EncodeAddr): the metadata map's value and the address
 * encoding. Its own layout must never change: it is how a build recognises
 * pins of another build.
 */
#ifndef WARP_PINSET_H
#define WARP_PINSET_H

#include "uapi.h"

/*
 * Address families of warpnet's map keys and values. An address is 16
 * bytes next to one of these: IPv4 occupies addr[0..3] with addr[4..15]
 * zero (not IPv4-mapped), so a lookup needs no conversion and the family
 * keeps 1.2.3.4 and the IPv6 address 0102:0304:: apart.
 */
#define WARP_FAMILY_V4 4
#define WARP_FAMILY_V6 6

/*
 * The single value of an object's metadata map (an array of one, pinned
 * with the object's other maps): which layout its pinned maps have and which
 * build its pinned programs come from (SHA-256 of the embedded ELF). Written
 * and read by Go only.
 */
struct meta {
	__u32 magic;  /* pinset.Magic ("warp") once initialised */
	__u32 layout; /* the object's layout version */
	__u8 build[32];
};

#endif
