// SPDX-License-Identifier: GPL-2.0
/* DNS as each network namespace's sockets see it, counted in the kernel: two cgroup_skb
 * programs on the root of the cgroup v2 hierarchy see every packet a local socket sends
 * (egress) or receives (ingress), in every namespace. A query leaving for port 53 (UDP, or
 * TCP with its length prefix) is counted by type and remembered by (namespace, resolver,
 * client, ports, id); the answer arriving from port 53 takes it back, and is counted by rcode
 * with its latency, or as a timeout when it came later than `timeout_ns`. Queries nobody
 * answers are timed out by user space, which deletes them from `dns_flights` (whoever deletes
 * an entry counts it: never both). Nothing per packet leaves the kernel.
 *
 * Why cgroup_skb: it runs for local sockets only (a forwarding node's transit packets never
 * reach it, so nothing is counted twice), one attachment covers every Pod present and future
 * (no per-veth attach and detach as Pods come and go), bpf_skb_load_bytes reads payload that
 * TCP keeps in page fragments, and it is a socket-level hook that sees a namespace's own
 * traffic on loopback too (a node-local cache). tc/tcx would see forwarded packets, need one
 * attachment per device, and see a Pod's query once on each side of its veth.
 *
 * Every packet is let through (return 1): the programs only count. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dns.h"
#include "log2_bucket.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define AF_INET 2
#define AF_INET6 10
#define DNS_PORT 53
#define DNS_HEADER 12
/* A question's name is at most 255 bytes; its type and class follow. */
#define NAME_LOAD 260

/* Set by user space when it loads the program: an answer later than this is a timeout. */
volatile const __u64 timeout_ns = 5000000000ULL;

/* Not preallocated: a preallocated per-CPU hash holds DNS_MAX_ENTRIES x CPUs x 296 bytes from
 * the start; this one grows with the keys in use. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, DNS_MAX_ENTRIES);
	__type(key, struct dns_key);
	__type(value, struct dns_counts);
} dns_counts SEC(".maps");

/* Queries waiting for their answer. Shared by all CPUs: the answer may arrive on another. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DNS_FLIGHTS_MAX_ENTRIES);
	__type(key, struct dns_flight);
	__type(value, struct dns_sent);
} dns_flights SEC(".maps");

/* NXDOMAIN answers waiting for a NOERROR to the same first label from the same namespace (then
 * they were search-path expansion); the oldest make room, unmatched ones are not expansion. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DNS_LABELS_MAX_ENTRIES);
	__type(key, struct dns_label);
	__type(value, struct dns_nxdomains);
} dns_labels SEC(".maps");

/* Events not counted because `dns_counts` (UNCOUNTED_COUNTS) or `dns_flights`
 * (UNCOUNTED_FLIGHTS) was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dns_overflow SEC(".maps");

/* A zeroed value to create keys from, and room for a question's name: both larger than the
 * 512-byte stack allows beside the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_counts);
} dns_zero SEC(".maps");

struct name_buf {
	__u8 b[512]; /* NAME_LOAD used; the rest lets an index masked with 0x1ff stay inside */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_buf);
} dns_name SEC(".maps");

static __always_inline void count_lost(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&dns_overflow, &slot);

	if (n)
		*n += 1;
}

/* The counters of `key`, created when missing; NULL (and counted) when the map is full. */
static __always_inline struct dns_counts *counts_of(struct dns_key *key)
{
	struct dns_counts *c = bpf_map_lookup_elem(&dns_counts, key);
	__u32 zero = 0;

	if (c)
		return c;
	c = bpf_map_lookup_elem(&dns_zero, &zero);
	if (c)
		bpf_map_update_elem(&dns_counts, key, c, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&dns_counts, key);
	if (!c)
		count_lost(UNCOUNTED_COUNTS);
	return c;
}

static __always_inline __u32 type_slot(__u16 qtype)
{
	switch (qtype) {
	case 1:  return 0; /* A */
	case 28: return 1; /* AAAA */
	case 33: return 2; /* SRV */
	case 12: return 3; /* PTR */
	default: return 4;
	}
}

static __always_inline __u32 rcode_slot(__u8 rcode)
{
	switch (rcode) {
	case 0: return 0; /* NOERROR */
	case 3: return 1; /* NXDOMAIN */
	case 2: return 2; /* SERVFAIL */
	case 5: return 3; /* REFUSED */
	default: return 4;
	}
}

/* The question's type, from the name at `off` on, and a hash of its first label in `first`:
 * -1 when the name does not parse (a label longer than 63 bytes or a compression pointer, a
 * name past 255 bytes with its final empty label, or past the packet). */
static __always_inline int question_type(struct __sk_buff *skb, __u32 off, __u32 *first)
{
	struct name_buf *name;
	__u64 n, pos = 0; /* 64-bit: no zero-extension copies between a check and its use */
	__u32 zero = 0;
	int i;

	if (off >= skb->len)
		return -1;
	n = skb->len - off;
	if (n > NAME_LOAD)
		n = NAME_LOAD;
	if (n < 5) /* the root name, a type and a class */
		return -1;
	name = bpf_map_lookup_elem(&dns_name, &zero);
	if (!name || bpf_skb_load_bytes(skb, off, name->b, n) < 0)
		return -1;
	for (i = 0; i < 128; i++) {
		__u8 len;

		if (pos > 255)
			return -1;
		len = name->b[pos & 0x1ff];
		if (len == 0)
			break;
		if (len > 63)
			return -1;
		pos += len + 1;
	}
	if (i == 128 || pos + 5 > n)
		return -1;
	/* Keeps the bound check where the verifier sees it (clang would fold it into the index). */
	asm volatile("" : "+r"(pos));
	if (pos > 254)
		return -1;
	*first = 2166136261u; /* FNV-1a over the first label's length and bytes */
	for (i = 0; i < 64; i++) {
		if (i > name->b[0])
			break;
		*first = (*first ^ name->b[i]) * 16777619u;
	}
	return ((__u16)name->b[pos + 1] << 8) | name->b[pos + 2];
}

static __always_inline int dns(struct __sk_buff *skb, int egress)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u8 *p = data, *t, hdr[DNS_HEADER], proto;
	struct dns_flight flight = {};
	struct dns_key key = {};
	struct dns_counts *c;
	__u32 l4, off;
	__u16 sport, dport;
	struct bpf_sock *sk;
	__u8 *remote;
	int alen;

	/* The common path, every packet of every local socket: a few loads and compares. */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (p + 20 > (__u8 *)end)
			return 1;
		proto = p[9];
		if ((proto != IPPROTO_UDP && proto != IPPROTO_TCP) || (p[6] & 0x1f) || p[7])
			return 1; /* another protocol, or a fragment past the first */
		l4 = (p[0] & 0x0f) * 4;
		key.family = 4;
		alen = 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (p + 40 > (__u8 *)end)
			return 1;
		proto = p[6]; /* extension headers are not followed */
		if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
			return 1;
		l4 = 40;
		key.family = 6;
		alen = 16;
	} else {
		return 1;
	}
	if (l4 < 20)
		return 1;
	t = p + l4;
	if (t + 4 > (__u8 *)end)
		return 1;
	sport = ((__u16)t[0] << 8) | t[1];
	dport = ((__u16)t[2] << 8) | t[3];
	if ((egress ? dport : sport) != DNS_PORT)
		return 1;

	/* A DNS packet: where its message starts. */
	if (proto == IPPROTO_UDP) {
		off = l4 + 8;
	} else {
		if (t + 13 > (__u8 *)end)
			return 1;
		off = l4 + (t[12] >> 4) * 4 + 2; /* after the TCP header and the length */
		if (off - 2 >= skb->len)
			return 1; /* a segment without payload: the handshake, an ACK */
	}
	/* The resolver: for a query, the address its socket was connected to if it was (the one
	 * the application asked for: a ClusterIP even when NAT in this namespace translated the
	 * packet, which egress sees after and ingress before), else the packet's. An answer is
	 * counted where its query was; this address serves only malformed packets. */
	remote = egress ? p + (alen == 4 ? 16 : 24) : p + (alen == 4 ? 12 : 8);
	if (alen == 4)
		__builtin_memcpy(key.addr, remote, 4);
	else
		__builtin_memcpy(key.addr, remote, 16);
	sk = egress ? skb->sk : NULL;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (sk && alen == 4 && sk->family == AF_INET && sk->dst_ip4) {
		__u32 dst = sk->dst_ip4;

		__builtin_memcpy(key.addr, &dst, 4);
	} else if (sk && alen == 16 && sk->family == AF_INET6 &&
		   (sk->dst_ip6[0] | sk->dst_ip6[1] | sk->dst_ip6[2] | sk->dst_ip6[3])) {
		__u32 dst[4] = { sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3] };

		__builtin_memcpy(key.addr, dst, 16);
	}
	key.netns = bpf_get_netns_cookie(skb);
	key.proto = proto;

	if (bpf_skb_load_bytes(skb, off, hdr, DNS_HEADER) < 0) {
		c = counts_of(&key);
		if (c)
			c->malformed += 1;
		return 1;
	}
	flight.netns = key.netns;
	flight.client_port = bpf_htons(egress ? sport : dport);
	__builtin_memcpy(&flight.id, hdr, 2);
	flight.proto = proto;

	if (egress) {
		struct dns_sent sent = { .at_ns = bpf_ktime_get_ns(), .family = key.family }, *old;
		int qtype, err;

		if (hdr[2] & 0x80)
			return 1; /* an answer sent to port 53: a server's business, not a client's */
		qtype = (hdr[4] == 0 && hdr[5] == 1) ?
			question_type(skb, off + DNS_HEADER, &sent.first_label) : -1;
		c = counts_of(&key);
		if (!c)
			return 1;
		if (qtype < 0) {
			c->malformed += 1;
			return 1;
		}
		c->queries[type_slot(qtype)] += 1;
		__builtin_memcpy(sent.resolver, key.addr, 16);
		err = bpf_map_update_elem(&dns_flights, &flight, &sent, BPF_NOEXIST);
		/* The same id from the same socket again (a retry): the first stays in flight,
		 * unless it has timed out, which is counted by whoever deletes it. */
		if (err == -17 /* EEXIST */) {
			old = bpf_map_lookup_elem(&dns_flights, &flight);
			if (old && sent.at_ns - old->at_ns > timeout_ns &&
			    bpf_map_delete_elem(&dns_flights, &flight) == 0) {
				c->late += 1;
				err = bpf_map_update_elem(&dns_flights, &flight, &sent, BPF_NOEXIST);
			}
		}
		if (err == -7 /* E2BIG */)
			count_lost(UNCOUNTED_FLIGHTS);
		return 1;
	}

	/* An answer: counted only if its query is in flight and nobody else took it. */
	if (!(hdr[2] & 0x80))
		return 1;
	{
		struct dns_sent *sent = bpf_map_lookup_elem(&dns_flights, &flight);
		struct dns_label label = { .netns = key.netns };
		struct dns_nxdomains *nx;
		__u8 rcode = hdr[3] & 0x0f;
		__u64 at, now, us;

		if (!sent)
			return 1;
		at = sent->at_ns;
		label.first_label = sent->first_label;
		key.family = sent->family;
		__builtin_memcpy(key.addr, sent->resolver, 16);
		if (bpf_map_delete_elem(&dns_flights, &flight) != 0)
			return 1;
		c = counts_of(&key);
		if (!c)
			return 1;
		now = bpf_ktime_get_ns();
		if (now - at > timeout_ns) {
			c->late += 1;
			return 1;
		}
		c->answers[rcode_slot(rcode)] += 1;
		if (rcode == 0 && hdr[6] == 0 && hdr[7] == 0)
			c->empty += 1;
		/* Search-path expansion: NXDOMAINs for a first label, then a NOERROR for it. */
		if (rcode == 3 || rcode == 0) {
			nx = bpf_map_lookup_elem(&dns_labels, &label);
			if (nx && now - nx->at_ns > timeout_ns) {
				bpf_map_delete_elem(&dns_labels, &label);
				nx = NULL;
			}
			if (rcode == 3 && nx) {
				__sync_fetch_and_add(&nx->count, 1);
				nx->at_ns = now;
			} else if (rcode == 3) {
				struct dns_nxdomains first = { .count = 1, .at_ns = now };

				bpf_map_update_elem(&dns_labels, &label, &first, BPF_ANY);
			} else if (nx) {
				c->expansions += nx->count;
				bpf_map_delete_elem(&dns_labels, &label);
			}
		}
		us = (now - at) / 1000;
		c->latency[log2_bucket(us, DNS_BUCKETS)] += 1;
		c->latency_sum_us += us;
	}
	return 1;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	return dns(skb, 1);
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	return dns(skb, 0);
}
