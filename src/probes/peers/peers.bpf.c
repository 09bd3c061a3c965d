// SPDX-License-Identifier: GPL-2.0
/* Who each namespace's TCP connections are with, and how they end, counted in the kernel:
 * tp_btf/inet_sock_set_state sees every state change of every TCP socket and adds it to a
 * per-CPU hash keyed by (namespace, role, port, peer address). Nothing per connection leaves
 * the kernel; user space reads the aggregates once per collection. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "peers.h"

char LICENSE[] SEC("license") = "GPL";

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define AF_INET 2
#define AF_INET6 10
#define ECONNRESET 104
#define ETIMEDOUT 110
#define ECONNREFUSED 111

/* Indexes into struct peer_counts. */
#define OPENED 0
#define REFUSED 1
#define TIMEOUT 2
#define RESET 3
#define OTHER 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PEERS_MAX_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct peer_counts);
} peers SEC(".maps");

/* Events that could not be counted because `peers` was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} peers_overflow SEC(".maps");

/* The role of each opened connection, for the counters of its end (the storage goes away with
 * the socket). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct peer_tag);
} peer_tags SEC(".maps");

static __always_inline int fill_key(struct peer_key *key, struct sock *sk, __u8 role)
{
	struct net *net = sk->__sk_common.skc_net.net;
	unsigned short family = sk->__sk_common.skc_family;

	key->netns = net ? net->ns.inum : 0;
	key->role = role;
	key->port = role == PEER_CLIENT ? bpf_ntohs(sk->__sk_common.skc_dport)
					: sk->__sk_common.skc_num;
	if (family == AF_INET) {
		__be32 a = sk->__sk_common.skc_daddr;

		key->family = 4;
		__builtin_memcpy(key->addr, &a, 4);
		return 0;
	}
	if (family == AF_INET6) {
		key->family = 6;
		bpf_probe_read_kernel(key->addr, 16, &sk->__sk_common.skc_v6_daddr);
		return 0;
	}
	return -1;
}

static __always_inline void bump(struct peer_key *key, int field)
{
	struct peer_counts zero = {}, *v;
	__u32 slot = 0;
	__u64 *lost;

	v = bpf_map_lookup_elem(&peers, key);
	if (!v) {
		bpf_map_update_elem(&peers, key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&peers, key); /* NULL: the map is full */
	}
	if (!v) {
		lost = bpf_map_lookup_elem(&peers_overflow, &slot);
		if (lost)
			*lost += 1;
		return;
	}
	/* This CPU's copy: no other writer. */
	switch (field) {
	case OPENED: v->opened += 1; break;
	case REFUSED: v->refused += 1; break;
	case TIMEOUT: v->timeout += 1; break;
	case RESET: v->reset += 1; break;
	default: v->other += 1; break;
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(peer_state, struct sock *sk, int oldstate, int newstate)
{
	struct peer_key key = {};
	struct peer_tag *tag;
	int err;

	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	if (!bpf_skc_to_tcp_sock(sk))
		return 0; /* not TCP (DCCP, SCTP, MPTCP parents) */
	if (newstate == TCP_ESTABLISHED) {
		__u8 role;

		if (oldstate == TCP_SYN_SENT)
			role = PEER_CLIENT;
		else if (oldstate == TCP_SYN_RECV)
			role = PEER_SERVER;
		else
			return 0;
		if (fill_key(&key, sk, role))
			return 0;
		bump(&key, OPENED);
		tag = bpf_sk_storage_get(&peer_tags, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (tag)
			tag->role = role;
		return 0;
	}
	err = sk->sk_err;
	if (oldstate == TCP_SYN_SENT) {
		if (fill_key(&key, sk, PEER_CLIENT))
			return 0;
		bump(&key, err == ECONNREFUSED ? REFUSED : err == ETIMEDOUT ? TIMEOUT : OTHER);
		return 0;
	}
	if (err != ECONNRESET)
		return 0;
	/* Only connections opened while the program ran have a role to count under. */
	tag = bpf_sk_storage_get(&peer_tags, sk, 0, 0);
	if (!tag)
		return 0;
	if (fill_key(&key, sk, tag->role))
		return 0;
	bump(&key, RESET);
	return 0;
}
