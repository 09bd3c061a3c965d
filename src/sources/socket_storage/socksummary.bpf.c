// SPDX-License-Identifier: GPL-2.0
/* Socket summaries of every network namespace in one pass over the sockets themselves,
 * instead of a sock_diag dump per namespace (each of which walks the node's whole TCP hash).
 *
 * - tp_btf/inet_sock_set_state tags every TCP socket that changes state with its namespace's
 *   inode, in socket storage (the storage goes away with the socket).
 * - iter/tcp, run once per namespace from a thread inside it, tags the sockets that existed
 *   before the tracepoint was attached.
 * - iter/bpf_sk_storage_map visits every tagged socket of every namespace and sums, per
 *   namespace, what tcpsummary and sockbacklog report; user space reads one small map. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "socksummary.h"

char LICENSE[] SEC("license") = "GPL";

#define TCP_ESTABLISHED 1
#define TCP_LISTEN 10

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_tag);
} sk_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SUMMARY_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct ns_summary);
} summary SEC(".maps");

/* Sockets not summed because `summary` was full (more namespaces than it holds). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} summary_overflow SEC(".maps");

static __always_inline void tag(struct tcp_sock *tp, __u32 netns)
{
	struct sock_tag *t = bpf_sk_storage_get(&sk_tags, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (t)
		t->netns = netns;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tag_on_state, struct sock *sk, int oldstate, int newstate)
{
	struct tcp_sock *tp;
	struct net *net;

	/* Only the states the pass counts: one storage operation per socket, not one per
	 * transition (a connection goes through half a dozen). A tagged socket keeps its tag. */
	if (newstate != TCP_ESTABLISHED && newstate != TCP_LISTEN)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0; /* not TCP (DCCP, SCTP, MPTCP subflow parents...) */
	net = sk->__sk_common.skc_net.net;
	tag(tp, net ? net->ns.inum : 0);
	return 0;
}

SEC("iter/tcp")
int tag_existing(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	struct net *net;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc); /* NULL for TIME_WAIT and request sockets */
	if (!tp)
		return 0;
	net = skc->skc_net.net;
	tag(tp, net ? net->ns.inum : 0);
	return 0;
}

SEC("iter/bpf_sk_storage_map")
int sum_sockets(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct sock_tag *t = ctx->value;
	struct ns_summary zero = {}, *s;
	struct tcp_sock *tp;
	unsigned char state;
	__u32 netns, slot = 0;
	__u64 *lost;
	__s32 rx;

	if (!sk || !t)
		return 0;
	netns = t->netns;
	state = sk->__sk_common.skc_state;
	if (state != TCP_ESTABLISHED && state != TCP_LISTEN)
		return 0;
	s = bpf_map_lookup_elem(&summary, &netns);
	if (!s) {
		bpf_map_update_elem(&summary, &netns, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&summary, &netns);
		if (!s) {
			lost = bpf_map_lookup_elem(&summary_overflow, &slot);
			if (lost)
				*lost += 1;
			return 0;
		}
	}
	if (state == TCP_LISTEN) {
		s->accept_queue += sk->sk_ack_backlog;
		return 0;
	}
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	s->established += 1;
	/* As sock_diag computes them (tcp_diag_get_info): a negative receive queue is 0. */
	rx = (__s32)(tp->rcv_nxt - tp->copied_seq);
	s->rx_queue += rx > 0 ? rx : 0;
	s->tx_queue += tp->write_seq - tp->snd_una;
	return 0;
}
