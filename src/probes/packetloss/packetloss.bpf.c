// SPDX-License-Identifier: GPL-2.0
/* Counts every dropped packet (skb:kfree_skb) by network namespace, drop reason and device,
 * in-kernel, in a per-CPU cache of slots in front of a per-CPU hash. Three entry points share
 * the counting; user space attaches the first one the kernel accepts: tp_btf, then
 * raw_tracepoint, then tracepoint. No per-packet event leaves the kernel. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "packetloss.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DROPS_MAX_ENTRIES);
	__type(key, struct drop_key);
	__type(value, __u64);
} drops SEC(".maps");

/* Drops that could not be counted because `drops` was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

/* This CPU's slots: a key hashes to one of them and keeps it once claimed. A hit costs an
 * inlined array lookup, a key compare and an add where the hash costs a hashed bucket walk
 * (`make bench`: drops). Counts never move between the slots and the hash: user space adds
 * both, so the cache changes no count. A key whose slot another key holds uses the hash. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct drop_slots);
} drop_slots SEC(".maps");

static __always_inline void bump(struct drop_key *key)
{
	struct drop_slots *slots;
	struct drop_slot *s;
	__u64 *v, one = 1;
	__u32 zero = 0, h;

	slots = bpf_map_lookup_elem(&drop_slots, &zero);
	/* Reason 0 (not a drop) never claims: a slot whose reason reads 0 is a claim half seen. */
	if (slots && key->reason) {
		h = key->netns * 0x9E3779B1u ^ key->ifindex * 0x85EBCA6Bu ^ key->reason * 0xC2B2AE35u;
		s = &slots->slot[(h >> 26) & (DROP_SLOTS - 1)];
		if (s->count) {
			if (s->reason == key->reason && s->netns == key->netns &&
			    s->ifindex == key->ifindex) {
				s->count += 1; /* this CPU's slot: no other writer */
				return;
			}
		} else {
			s->netns = key->netns;
			s->ifindex = key->ifindex;
			s->pad = 0;
			s->reason = key->reason;
			/* A sequentially consistent add: the key's stores stay before it (and x86 keeps
			 * stores in order). User space reads the slots twice and trusts a slot only
			 * when both reads agree on its key, so a claim read half-way is skipped. */
			__sync_fetch_and_add(&s->count, 1);
			return;
		}
	}

	v = bpf_map_lookup_elem(&drops, key);
	if (v) {
		*v += 1; /* this CPU's slot: no other writer */
		return;
	}
	if (bpf_map_update_elem(&drops, key, &one, BPF_NOEXIST) == 0)
		return;
	/* Another CPU created it meanwhile, or the map is full. */
	v = bpf_map_lookup_elem(&drops, key);
	if (v) {
		*v += 1;
		return;
	}
	v = bpf_map_lookup_elem(&overflow, &zero);
	if (v)
		*v += 1;
}

/* For untyped pointers (raw_tracepoint, tracepoint): every load is a CO-RE probe read. */
static __always_inline void count(struct sk_buff *skb, __u32 reason)
{
	struct drop_key key = {};
	struct net_device *dev;
	struct sock *sk;

	key.reason = reason;
	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		key.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		key.ifindex = BPF_CORE_READ(dev, ifindex);
	} else {
		sk = BPF_CORE_READ(skb, sk);
		if (sk)
			key.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	bump(&key);
}

/* tp_btf arguments are typed kernel pointers: plain loads, checked by the verifier and
 * relocated by CO-RE, are cheaper than probe-read helper calls. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf, struct sk_buff *skb, void *location, unsigned int reason)
{
	struct drop_key key = {};
	struct net_device *dev = skb->dev;
	struct sock *sk;
	struct net *net;

	key.reason = reason;
	if (dev) {
		net = dev->nd_net.net;
		key.netns = net ? net->ns.inum : 0;
		key.ifindex = dev->ifindex;
	} else {
		sk = skb->sk;
		net = sk ? sk->__sk_common.skc_net.net : 0;
		key.netns = net ? net->ns.inum : 0;
	}
	bump(&key);
	return 0;
}

/* Not attached by the agent: `make bench` attaches it to measure what the attach point itself
 * costs (the tracepoint's dispatch to a BPF program that does nothing), the floor under any
 * counting. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_floor, struct sk_buff *skb, void *location, unsigned int reason)
{
	return 0;
}

/* raw_tp arguments: skb, location, reason (, rx_sk from 6.11). The context is typed as a
 * plain array: `struct bpf_raw_tracepoint_args *` has a flexible array that aya refuses to
 * relocate, which would break the whole object. */
SEC("raw_tracepoint/kfree_skb")
int kfree_skb_raw(unsigned long long *ctx)
{
	count((struct sk_buff *)ctx[0], (__u32)ctx[2]);
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int kfree_skb_tp(struct trace_event_raw_kfree_skb *ctx)
{
	/* Direct loads: the record is the context, whose fields CO-RE places. */
	count((struct sk_buff *)ctx->skbaddr, ctx->reason);
	return 0;
}
