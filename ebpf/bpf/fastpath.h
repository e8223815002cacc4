/* Shared between the BPF programs and the Rust loader (src/maps.rs mirrors every value). */
#ifndef HOSTGW_FASTPATH_H
#define HOSTGW_FASTPATH_H

/* Index of the per-CPU `counters` array: what the programs did with a packet, and why. */
enum hgw_reason {
	HGW_FWD_PEER = 0,      /* fast-pathed: bpf_redirect_peer into a pod */
	HGW_FWD_REDIRECT,      /* fast-pathed: bpf_redirect out of the uplink */
	HGW_PASS_NOT_IP,       /* neither IPv4 nor IPv6 */
	HGW_PASS_NOT_HOST,     /* not addressed to this host (broadcast, multicast, other host) */
	HGW_PASS_MALFORMED,    /* header shorter than it says */
	HGW_PASS_L4,           /* not TCP, UDP or ICMP */
	HGW_PASS_FRAGMENT,     /* an IP fragment */
	HGW_PASS_IP_OPTIONS,   /* IPv4 options or IPv6 extension headers */
	HGW_PASS_TTL,          /* TTL/hop limit would expire: the stack sends the ICMP error */
	HGW_PASS_ICMP_OTHER,   /* ICMP that is not echo: errors refer to another flow's conntrack */
	HGW_PASS_OUTSIDE,      /* destination outside the cluster network */
	HGW_PASS_CT_NAT,       /* conntrack holds the flow as NATed: the stack must (un)NAT it */
	HGW_PASS_CT_ERROR,     /* conntrack lookup failed for another reason than "no entry" */
	HGW_PASS_NOT_FWDED,    /* FIB: local delivery, or no route */
	HGW_PASS_FIB_DROP,     /* FIB: blackhole, unreachable or prohibit route */
	HGW_PASS_NO_NEIGH,     /* FIB: no neighbour entry yet; the stack resolves it */
	HGW_PASS_FRAG_NEEDED,  /* FIB: larger than the egress MTU */
	HGW_PASS_FIB_OTHER,    /* FIB: forwarding disabled, LWT route, or any other answer */
	HGW_PASS_EGRESS_OTHER, /* FIB egress is not an interface the fast path owns */
	HGW_PASS_BAD_SOURCE,   /* from a pod, with a source address not routed back to its veth */
	HGW_REASONS,
};

/* Slots of the counters array: more than there are reasons, so a new reason (appended, never
 * inserted) keeps the pinned map's layout and an upgrade can reuse it. */
#define HGW_COUNTER_SLOTS 64

/* Value of `fast_ifaces`, keyed by ifindex: the interfaces the fast path may send to. */
enum hgw_iface_kind {
	HGW_IFACE_UPLINK = 1,
	HGW_IFACE_POD = 2,
};

/* The only entry of the `config` array: the cluster networks, in network byte order. */
struct hgw_config {
	__u32 net4;
	__u32 mask4;
	__u32 net6[4];
	__u32 mask6[4];
	__u32 flags; /* HGW_HAVE_V4 | HGW_HAVE_V6; no flag: everything goes to the stack */
};

#define HGW_HAVE_V4 1
#define HGW_HAVE_V6 2

struct hgw_counter {
	__u64 packets;
	__u64 bytes;
};

#endif
