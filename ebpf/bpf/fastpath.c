// SPDX-License-Identifier: GPL-2.0
/* hostgw's eBPF fast path: two tc (tcx) ingress programs that forward pod traffic with the
 * kernel's own FIB and neighbour table, and hand everything else to the normal stack unchanged.
 *
 *   hgw_from_uplink: on the node's uplink; a packet for a local pod goes straight into the pod
 *                    with bpf_redirect_peer() (no second veth crossing, no IP forward).
 *   hgw_from_pod:    on each pod's host veth; a packet for a pod elsewhere goes out of the
 *                    uplink with bpf_redirect(), one for a pod on this node into that pod.
 *
 * The routes stay the source of truth: every packet asks bpf_fib_lookup(), so a route the daemon
 * adds or withdraws takes effect at once. A flow that conntrack holds as NATed (Service DNAT,
 * hostPort, masquerade) goes to the stack, which alone can undo the NAT.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
/* From linux/icmp.h and linux/icmpv6.h, which pull in libc headers a BPF build lacks. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define ENOENT 2
/* UAPI since 6.3; older headers lack it. The answer then carries the egress, not the MACs. */
#ifndef BPF_FIB_LOOKUP_SKIP_NEIGH
#define BPF_FIB_LOOKUP_SKIP_NEIGH (1U << 2)
#endif
/* tcx's "go on to the next program, then the stack" (UAPI since 6.6; older headers lack it). */
#ifndef TCX_NEXT
#define TCX_NEXT -1
#endif

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HGW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct hgw_counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hgw_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} fast_ifaces SEC(".maps");

/* The conntrack kfuncs (net/netfilter/nf_conntrack_bpf.c, tc programs since Linux 6.0). Only the
 * field we read is declared; CO-RE relocates its offset against the running kernel's BTF. */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

/* The 12-byte layout every kernel since 6.0 accepts (NF_BPF_CT_OPTS_OLD_SZ). */
struct ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
					 __u32 tuple__sz, struct ct_opts *opts,
					 __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

/* What the parser found; the L3/L4 fields the FIB and conntrack lookups need. */
struct flow {
	struct bpf_sock_tuple tuple;
	__u8 family;
	__u8 l4proto;
	__u8 tos;
	__u32 flowinfo;
	/* Bytes from the IP header on: the frame's own length, not what its header claims (a
	 * header that lies about its length must not slip a large frame past the MTU check), or
	 * one segment's of a GSO packet. */
	__u32 l3_len;
	/* The IP header's length (the L4 header starts there). */
	__u32 l3_hdr;
};

static __always_inline int count(struct __sk_buff *skb, __u32 reason)
{
	struct hgw_counter *c = bpf_map_lookup_elem(&counters, &reason);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	return reason;
}

/* Makes the first `len` bytes linear so direct packet access can read them. */
static __always_inline int pull(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (bpf_skb_pull_data(skb, len))
		return -1;
	return (void *)(long)skb->data + len <= (void *)(long)skb->data_end ? 0 : -1;
}

static __always_inline int icmp_is_echo(__u8 family, __u8 type)
{
	if (family == AF_INET)
		return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
	return type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY;
}

/* Reads the L4 header: ports into the tuple for TCP/UDP, the type check for ICMP. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	if (pull(skb, off + 4))
		return HGW_PASS_MALFORMED;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *l4 = data + off;

	if ((void *)(l4 + 4) > end)
		return HGW_PASS_MALFORMED;
	if (skb->gso_size) {
		/* What the MTU check must see is one segment: IP and L4 headers plus gso_size, as
		 * skb_gso_validate_network_len() has it in ip_forward(). */
		__u32 l4_hdr = 8;
		if (f->l4proto == IPPROTO_TCP) {
			if (pull(skb, off + 13))
				return HGW_PASS_MALFORMED;
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
			l4 = data + off;
			if ((void *)(l4 + 13) > end)
				return HGW_PASS_MALFORMED;
			l4_hdr = (l4[12] >> 4) * 4;
		}
		f->l3_len = f->l3_hdr + l4_hdr + skb->gso_size;
	}
	if (f->l4proto == IPPROTO_ICMP || f->l4proto == IPPROTO_ICMPV6)
		return icmp_is_echo(f->family, l4[0]) ? -1 : HGW_PASS_ICMP_OTHER;
	__be16 *ports = (__be16 *)l4;
	if (f->family == AF_INET) {
		f->tuple.ipv4.sport = ports[0];
		f->tuple.ipv4.dport = ports[1];
	} else {
		f->tuple.ipv6.sport = ports[0];
		f->tuple.ipv6.dport = ports[1];
	}
	return -1;
}

/* -1: a packet the fast path may take; otherwise the reason it goes to the stack. */
static __always_inline int parse_v4(struct __sk_buff *skb, struct hgw_config *cfg, struct flow *f)
{
	if (pull(skb, ETH_HLEN + sizeof(struct iphdr)))
		return HGW_PASS_MALFORMED;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > end)
		return HGW_PASS_MALFORMED;
	if (!(cfg->flags & HGW_HAVE_V4) || (ip->daddr & cfg->mask4) != cfg->net4)
		return HGW_PASS_OUTSIDE;
	if (ip->ihl != 5)
		return HGW_PASS_IP_OPTIONS;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return HGW_PASS_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP &&
	    ip->protocol != IPPROTO_ICMP)
		return HGW_PASS_L4;
	if (ip->ttl <= 1)
		return HGW_PASS_TTL;
	f->family = AF_INET;
	f->l4proto = ip->protocol;
	f->tos = ip->tos;
	f->tuple.ipv4.saddr = ip->saddr;
	f->tuple.ipv4.daddr = ip->daddr;
	f->l3_hdr = sizeof(struct iphdr);
	f->l3_len = skb->len - ETH_HLEN;
	return parse_l4(skb, ETH_HLEN + sizeof(struct iphdr), f);
}

static __always_inline int in_net6(struct hgw_config *cfg, struct in6_addr *a)
{
	if (!(cfg->flags & HGW_HAVE_V6))
		return 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		if ((a->in6_u.u6_addr32[i] & cfg->mask6[i]) != cfg->net6[i])
			return 0;
	return 1;
}

static __always_inline int parse_v6(struct __sk_buff *skb, struct hgw_config *cfg, struct flow *f)
{
	if (pull(skb, ETH_HLEN + sizeof(struct ipv6hdr)))
		return HGW_PASS_MALFORMED;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	if ((void *)(ip6 + 1) > end)
		return HGW_PASS_MALFORMED;
	if (!in_net6(cfg, &ip6->daddr))
		return HGW_PASS_OUTSIDE;
	switch (ip6->nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_ICMPV6:
		break;
	case IPPROTO_FRAGMENT:
		return HGW_PASS_FRAGMENT;
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
		return HGW_PASS_IP_OPTIONS;
	default:
		return HGW_PASS_L4;
	}
	if (ip6->hop_limit <= 1)
		return HGW_PASS_TTL;
	f->family = AF_INET6;
	f->l4proto = ip6->nexthdr;
	f->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
	__builtin_memcpy(f->tuple.ipv6.saddr, &ip6->saddr, 16);
	__builtin_memcpy(f->tuple.ipv6.daddr, &ip6->daddr, 16);
	f->l3_hdr = sizeof(struct ipv6hdr);
	f->l3_len = skb->len - ETH_HLEN;
	return parse_l4(skb, ETH_HLEN + sizeof(struct ipv6hdr), f);
}

/* A flow conntrack knows as NATed must see the stack, which undoes the NAT (a Service reply
 * from its backend, a hostPort reply, a masqueraded flow). The lookup finds the entry from
 * either direction's tuple. ICMP echo is not looked up: the kfunc takes TCP and UDP only. */
static __always_inline int ct_check(struct __sk_buff *skb, struct flow *f)
{
	if (f->l4proto != IPPROTO_TCP && f->l4proto != IPPROTO_UDP)
		return -1;
	struct ct_opts opts = { .netns_id = -1, .l4proto = f->l4proto };
	struct nf_conn *ct;

	/* The tuple size must be a constant the verifier can see, hence two calls. */
	if (f->family == AF_INET)
		ct = bpf_skb_ct_lookup(skb, &f->tuple, sizeof(f->tuple.ipv4), &opts, sizeof(opts));
	else
		ct = bpf_skb_ct_lookup(skb, &f->tuple, sizeof(f->tuple.ipv6), &opts, sizeof(opts));

	if (!ct)
		return opts.error == -ENOENT ? -1 : HGW_PASS_CT_ERROR;
	unsigned long status = ct->status;
	bpf_ct_release(ct);
	return status & IPS_NAT_MASK ? HGW_PASS_CT_NAT : -1;
}

static __always_inline int fib_reason(int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return HGW_PASS_NOT_FWDED;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return HGW_PASS_FIB_DROP;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return HGW_PASS_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return HGW_PASS_FRAG_NEEDED;
	default:
		return HGW_PASS_FIB_OTHER;
	}
}

static __always_inline int fib(struct __sk_buff *skb, struct flow *f, struct bpf_fib_lookup *p)
{
	p->family = f->family;
	p->l4_protocol = f->l4proto;
	/* tot_len is what the route's MTU is checked against: the packet's IP length, or one
	 * segment's for a GSO packet (the whole GSO skb, up to 64 KB or more with BIG TCP, would
	 * always exceed it). With tot_len 0 the helper would check the egress device's MTU only
	 * (is_skb_forwardable()), and a per-peer route mtu (a jumbo node towards a 1500 one)
	 * would be passed by: a silent black hole. IPv4 honours a route's mtu here only when it
	 * is locked, which is how the daemon installs it. Too big: FRAG_NEEDED, the stack sends
	 * the ICMP error. */
	p->tot_len = f->l3_len;
	p->ifindex = skb->ingress_ifindex;
	if (f->family == AF_INET) {
		p->tos = f->tos;
		p->ipv4_src = f->tuple.ipv4.saddr;
		p->ipv4_dst = f->tuple.ipv4.daddr;
	} else {
		p->flowinfo = f->flowinfo;
		__builtin_memcpy(p->ipv6_src, f->tuple.ipv6.saddr, 16);
		__builtin_memcpy(p->ipv6_dst, f->tuple.ipv6.daddr, 16);
	}
	int rc = bpf_fib_lookup(skb, p, sizeof(*p), 0);
	return rc == BPF_FIB_LKUP_RET_SUCCESS ? -1 : fib_reason(rc);
}

/* Strict reverse-path check for packets from a pod, as rp_filter=1 does it: the route back to
 * the source must leave by the veth the packet came in on. A spoofed source goes to the stack,
 * which applies the node's own rp_filter setting, so the fast path never forwards what plain
 * routes would drop. */
static __always_inline int source_ok(struct __sk_buff *skb, struct flow *f)
{
	struct bpf_fib_lookup r = {};

	r.family = f->family;
	r.ifindex = skb->ingress_ifindex;
	if (f->family == AF_INET) {
		r.ipv4_src = f->tuple.ipv4.daddr;
		r.ipv4_dst = f->tuple.ipv4.saddr;
	} else {
		__builtin_memcpy(r.ipv6_src, f->tuple.ipv6.daddr, 16);
		__builtin_memcpy(r.ipv6_dst, f->tuple.ipv6.saddr, 16);
	}
	int rc = bpf_fib_lookup(skb, &r, sizeof(r), BPF_FIB_LOOKUP_SKIP_NEIGH);
	return rc == BPF_FIB_LKUP_RET_SUCCESS && r.ifindex == skb->ingress_ifindex;
}

/* What a router does to a forwarded packet: one hop less, the next hop's MAC addresses. */
static __always_inline int rewrite(struct __sk_buff *skb, struct flow *f, struct bpf_fib_lookup *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if (f->family == AF_INET) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > end)
			return -1;
		/* RFC 1624 incremental update, as the kernel's ip_decrease_ttl() does it. */
		__u32 check = (__u32)ip->check + (__u32)bpf_htons(0x0100);
		ip->check = (__sum16)(check + (check >= 0xFFFF));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return -1;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, p->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, p->smac, ETH_ALEN);
	return 0;
}

/* The decision both programs share; `from_pod` says which egress kinds this hook may use. */
static __always_inline int fast_path(struct __sk_buff *skb, int from_pod, __u32 *egress)
{
	__u32 zero = 0;
	struct hgw_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct flow f = {};
	struct bpf_fib_lookup p = {};
	int why;

	if (!cfg)
		return count(skb, HGW_PASS_OUTSIDE);
	if (skb->pkt_type != PACKET_HOST)
		return count(skb, HGW_PASS_NOT_HOST);
	if (skb->protocol == bpf_htons(ETH_P_IP))
		why = parse_v4(skb, cfg, &f);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		why = parse_v6(skb, cfg, &f);
	else
		why = HGW_PASS_NOT_IP;
	if (why < 0)
		why = ct_check(skb, &f);
	if (why < 0)
		why = fib(skb, &f, &p);
	if (why >= 0)
		return count(skb, why);

	__u32 out = p.ifindex;
	__u32 *kind = bpf_map_lookup_elem(&fast_ifaces, &out);
	if (!kind || out == skb->ingress_ifindex)
		return count(skb, HGW_PASS_EGRESS_OTHER);
	if (*kind == HGW_IFACE_UPLINK && !from_pod)
		return count(skb, HGW_PASS_EGRESS_OTHER);
	if (from_pod && !source_ok(skb, &f))
		return count(skb, HGW_PASS_BAD_SOURCE);
	if (rewrite(skb, &f, &p))
		return count(skb, HGW_PASS_MALFORMED);
	*egress = out;
	if (*kind == HGW_IFACE_POD)
		return count(skb, HGW_FWD_PEER);
	return count(skb, HGW_FWD_REDIRECT);
}

/* The redirect helpers answer TC_ACT_REDIRECT; the device is checked when the skb leaves. */
static __always_inline int verdict(int reason, __u32 egress)
{
	if (reason == HGW_FWD_PEER)
		return bpf_redirect_peer(egress, 0);
	if (reason == HGW_FWD_REDIRECT)
		return bpf_redirect(egress, 0);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int hgw_from_uplink(struct __sk_buff *skb)
{
	__u32 egress = 0;
	int reason = fast_path(skb, 0, &egress);

	return verdict(reason, egress);
}

SEC("tcx/ingress")
int hgw_from_pod(struct __sk_buff *skb)
{
	__u32 egress = 0;
	int reason = fast_path(skb, 1, &egress);

	return verdict(reason, egress);
}
