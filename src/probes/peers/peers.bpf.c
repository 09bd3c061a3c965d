// SPDX-License-Identifier: GPL-2.0
/* Who each namespace's TCP connections are with, and how they fare, counted in the kernel:
 * BTF-typed tracepoints add each event to a per-CPU hash keyed by (namespace, role, port, peer
 * address). Nothing per connection leaves the kernel; user space reads the aggregates once per
 * collection.
 *
 * - sock:inet_sock_set_state: connections opened (and the socket tagged with its role), failed
 *   to open by reason, reset, closed; at CLOSE, what the socket's own counters added since the
 *   last report (retransmitted segments, bytes each way).
 * - tcp:tcp_retransmit_skb: the same report, so that a long connection's retransmits are
 *   counted as they happen, not only at its end.
 * - tcp:tcp_send_reset, tcp:tcp_receive_reset: RSTs sent and received on a socket.
 * - Latency histograms, per key: connect latency (a client's SYN_SENT -> ESTABLISHED) and the
 *   socket's smoothed RTT, sampled when an opened connection closes and, while it is open, by
 *   iter/tcp, which user space runs at each collection in the namespaces that may hold open
 *   connections (it also reports the bytes a long connection has moved so far).
 * - net:net_dev_queue: the first packets of connections whose destination conntrack translated
 *   (a ClusterIP, by kube-proxy's DNAT rules): the address they were sent to, remembered until
 *   the client's socket opens or fails, which counts it by that backend as well. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "peers.h"
#include "log2_bucket.h"

char LICENSE[] SEC("license") = "GPL";

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10
#define TCP_CLOSING 11
#define SOCK_DONE 1 /* enum sock_flags: set by tcp_fin() when the peer's FIN is taken in */
#define AF_INET 2
#define AF_INET6 10
#define ECONNRESET 104
#define ETIMEDOUT 110
#define ECONNREFUSED 111
#define IPPROTO_TCP 6
#define NFPROTO_IPV4 2
#define NFPROTO_IPV6 10
#define IP_CT_NEW 2          /* enum ip_conntrack_info: a packet of a connection not yet answered */
#define NFCT_INFOMASK 7UL
#define IPS_DST_NAT (1UL << 5) /* enum ip_conntrack_status: the destination was translated */

/* Not preallocated: a preallocated per-CPU hash would hold PEERS_MAX_ENTRIES x CPUs x 88
 * bytes from the start (138 MB on a 96-CPU node); this one grows with the keys in use. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PEERS_MAX_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct peer_counts);
} peers SEC(".maps");

/* Events that could not be counted because a map was full: `peers` (slot UNCOUNTED_PEERS),
 * `peer_timings` (UNCOUNTED_TIMINGS) or `peer_backends` (UNCOUNTED_BACKENDS). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} peers_overflow SEC(".maps");

/* Translated connections not yet opened or failed, by their client's side. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PEER_FLOWS_MAX_ENTRIES);
	__type(key, struct peer_flow);
	__type(value, struct peer_translation);
} peer_flows SEC(".maps");

/* Outcomes of translated connections by backend (slot UNCOUNTED_BACKENDS of peers_overflow
 * when full). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PEER_BACKENDS_MAX_ENTRIES);
	__type(key, struct peer_backend_key);
	__type(value, struct peer_backend_counts);
} peer_backends SEC(".maps");

/* Connect latency and RTT histograms by key; one copy shared by all CPUs (atomic adds), and
 * memory only for the keys in use. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PEERS_MAX_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct peer_timing);
} peer_timings SEC(".maps");

/* A zeroed peer_timing to create entries from: too big for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct peer_timing);
} timing_zero SEC(".maps");

/* Each counted socket's role and reported counters (the storage goes away with the socket). */
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

static __always_inline void count_lost(__u32 slot)
{
	__u64 *lost = bpf_map_lookup_elem(&peers_overflow, &slot);

	if (lost)
		*lost += 1;
}

/* The client's side of a socket's connection, as conntrack's original tuple has it (a
 * dual-stack socket's IPv4 connection as IPv4); `sport`: its local port, network order. */
static __always_inline int flow_of(struct peer_flow *f, struct sock *sk, __be16 sport)
{
	unsigned short family = sk->__sk_common.skc_family;

	f->sport = sport;
	f->dport = sk->__sk_common.skc_dport;
	if (family == AF_INET6) {
		__u32 d[4];

		bpf_probe_read_kernel(d, 16, &sk->__sk_common.skc_v6_daddr);
		if (!(d[0] == 0 && d[1] == 0 && d[2] == bpf_htonl(0xffff))) {
			f->family = 6;
			__builtin_memcpy(f->daddr, d, 16);
			bpf_probe_read_kernel(f->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
			return 0;
		}
	} else if (family != AF_INET) {
		return -1;
	}
	__be32 s = sk->__sk_common.skc_rcv_saddr, d4 = sk->__sk_common.skc_daddr;

	f->family = 4;
	__builtin_memcpy(f->saddr, &s, 4);
	__builtin_memcpy(f->daddr, &d4, 4);
	return 0;
}

#define BACKEND_OPENED 0
#define BACKEND_REFUSED 1
#define BACKEND_TIMEOUT 2
#define BACKEND_OTHER 3

/* A client's connection opened or failed: if its destination was translated, counted by the
 * backend it was sent to (`peer`: the key it is counted under as a peer). The local port is
 * inet_sport: a failed connect's socket has lost inet_num (skc_num) by the time the tracepoint
 * sees it close, inet_sport keeps it. */
static __always_inline void count_backend(struct sock *sk, struct tcp_sock *tp,
					  struct peer_key *peer, int outcome)
{
	__be16 sport = tp->inet_conn.icsk_inet.inet_sport;
	struct peer_backend_counts zero = {}, *v;
	struct peer_backend_key key = {};
	struct peer_translation *to;
	struct peer_flow flow = {};

	if (!sport || flow_of(&flow, sk, sport))
		return;
	to = bpf_map_lookup_elem(&peer_flows, &flow);
	if (!to)
		return;
	key.peer = *peer;
	__builtin_memcpy(key.backend, to->addr, 16);
	key.backend_port = bpf_ntohs(to->port);
	bpf_map_delete_elem(&peer_flows, &flow);
	v = bpf_map_lookup_elem(&peer_backends, &key);
	if (!v) {
		bpf_map_update_elem(&peer_backends, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&peer_backends, &key);
	}
	if (!v) {
		count_lost(UNCOUNTED_BACKENDS);
		return;
	}
	if (outcome == BACKEND_OPENED)
		v->opened += 1;
	else if (outcome == BACKEND_REFUSED)
		v->refused += 1;
	else if (outcome == BACKEND_TIMEOUT)
		v->timeout += 1;
	else
		v->other += 1;
}

/* This CPU's counters of `key`, created if new; NULL (and the loss counted) when the map is
 * full. No other writer touches this CPU's copy. */
static __always_inline struct peer_counts *counts_of(struct peer_key *key)
{
	struct peer_counts zero = {}, *v;

	v = bpf_map_lookup_elem(&peers, key);
	if (!v) {
		bpf_map_update_elem(&peers, key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&peers, key);
	}
	if (!v)
		count_lost(UNCOUNTED_PEERS);
	return v;
}

#define CONNECT_LATENCY 0
#define RTT 1

/* Adds one value (microseconds) to a histogram of `key`: bucket i holds values up to
 * 2^(i+4) us, so (2^(i+3), 2^(i+4)] for i > 0. Lost (and counted) when the map is full. */
static __always_inline void observe(struct peer_key *key, int which, __u64 us)
{
	struct peer_timing *t = bpf_map_lookup_elem(&peer_timings, key);
	__u32 slot = 0, b;

	if (!t) {
		struct peer_timing *zero = bpf_map_lookup_elem(&timing_zero, &slot);

		if (zero)
			bpf_map_update_elem(&peer_timings, key, zero, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&peer_timings, key);
	}
	if (!t) {
		count_lost(UNCOUNTED_TIMINGS);
		return;
	}
	b = log2_bucket(us, PEER_BUCKETS);
	if (which == CONNECT_LATENCY) {
		__sync_fetch_and_add(&t->connect[b], 1);
		__sync_fetch_and_add(&t->connect_sum_us, us);
	} else {
		__sync_fetch_and_add(&t->rtt[b], 1);
		__sync_fetch_and_add(&t->rtt_sum_us, us);
	}
}

/* The socket's smoothed RTT (srtt_us holds it times 8), as one sample. */
static __always_inline void sample_rtt(struct tcp_sock *tp, struct peer_tag *tag)
{
	__u32 srtt = tp->srtt_us >> 3;

	if (srtt)
		observe(&tag->key, RTT, srtt);
}

/* The payload the socket has had acknowledged and has received: the kernel's bytes_acked and
 * bytes_received also count the FIN, one sequence number each way (the SYN is left out by the
 * baseline taken when the connection opened). `state`: the socket's state, or the one it is
 * leaving. */
static __always_inline __u64 payload_sent(struct tcp_sock *tp, int state)
{
	__u64 acked = tp->bytes_acked;
	int fin_sent = state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 ||
		       state == TCP_CLOSING || state == TCP_LAST_ACK;

	return acked - (fin_sent && acked && tp->snd_una == tp->write_seq ? 1 : 0);
}

/* The socket's flags: in struct sock_common on newer kernels, struct sock's own before. */
static __always_inline unsigned long flags_of(struct sock *sk)
{
	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		return sk->__sk_common.skc_flags;
	return sk->sk_flags;
}

static __always_inline __u64 payload_received(struct sock *sk, struct tcp_sock *tp)
{
	__u64 received = tp->bytes_received;

	return received - (received && (flags_of(sk) & (1UL << SOCK_DONE)) ? 1 : 0);
}

/* Adds what the socket's counters gained since the last report to its peer's (`v`: its
 * counters if already looked up, else NULL). The kernel zeroes them when a socket is
 * disconnected and reused; a counter below its last report is counted from zero. */
static __always_inline void report(struct sock *sk, struct tcp_sock *tp, struct peer_tag *tag,
				   int state, struct peer_counts *v)
{
	__u32 retrans = tp->total_retrans;
	__u64 sent = payload_sent(tp, state), received = payload_received(sk, tp);
	__u64 d_retrans, d_sent, d_received;

	d_retrans = retrans >= tag->retransmits ? retrans - tag->retransmits : retrans;
	d_sent = sent >= tag->bytes_sent ? sent - tag->bytes_sent : sent;
	d_received = received >= tag->bytes_received ? received - tag->bytes_received : received;
	if (!d_retrans && !d_sent && !d_received)
		return;
	if (!v)
		v = counts_of(&tag->key);
	if (!v)
		return;
	v->retransmits += d_retrans;
	v->bytes_sent += d_sent;
	v->bytes_received += d_received;
	tag->retransmits = retrans;
	tag->bytes_sent = sent;
	tag->bytes_received = received;
}

/* The states of an opened connection, as it leaves them for CLOSE: it was counted opened. */
static __always_inline int was_open(int state)
{
	return state == TCP_ESTABLISHED || state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 ||
	       state == TCP_CLOSE_WAIT || state == TCP_CLOSING || state == TCP_LAST_ACK;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(peer_state, struct sock *sk, int oldstate, int newstate)
{
	struct peer_key key = {};
	struct peer_counts *v;
	struct peer_tag *tag;
	struct tcp_sock *tp;
	int err;

	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE && newstate != TCP_SYN_SENT)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0; /* not TCP (DCCP, SCTP, MPTCP parents) */
	if (newstate == TCP_SYN_SENT) {
		/* The clock of the connect latency: the SYN goes out right after. */
		if (fill_key(&key, sk, PEER_CLIENT))
			return 0;
		tag = bpf_sk_storage_get(&peer_tags, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (tag) {
			tag->key = key;
			tag->syn_ns = bpf_ktime_get_ns();
		}
		return 0;
	}
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
		v = counts_of(&key);
		if (v)
			v->opened += 1;
		if (role == PEER_CLIENT)
			count_backend(sk, tp, &key, BACKEND_OPENED);
		/* A client's tag may exist already: its SYN was retransmitted (and reported). The
		 * byte baselines leave the SYN out. */
		tag = bpf_sk_storage_get(&peer_tags, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (tag) {
			__u64 now = bpf_ktime_get_ns();

			tag->key = key;
			tag->bytes_sent = tp->bytes_acked;
			tag->bytes_received = tp->bytes_received;
			if (role == PEER_CLIENT && tag->syn_ns && now > tag->syn_ns)
				observe(&key, CONNECT_LATENCY, (now - tag->syn_ns) / 1000);
			tag->syn_ns = 0;
		}
		return 0;
	}
	tag = bpf_sk_storage_get(&peer_tags, tp, 0, 0);
	err = sk->sk_err;
	if (oldstate == TCP_SYN_SENT) {
		if (fill_key(&key, sk, PEER_CLIENT))
			return 0;
		v = counts_of(&key);
		if (v) {
			if (err == ECONNREFUSED)
				v->refused += 1;
			else if (err == ETIMEDOUT)
				v->timeout += 1;
			else
				v->other += 1;
		}
		count_backend(sk, tp, &key,
			      err == ECONNREFUSED ? BACKEND_REFUSED :
			      err == ETIMEDOUT	  ? BACKEND_TIMEOUT :
						    BACKEND_OTHER);
		v = NULL; /* the report's key is the tag's */
	} else if (tag && was_open(oldstate)) {
		/* Only connections opened while the program ran have a role to count under. */
		v = counts_of(&tag->key);
		if (v) {
			if (err == ECONNRESET)
				v->reset += 1;
			/* Opened less closed: whether a namespace may hold open connections to sample. */
			v->closed += 1;
		}
	} else {
		v = NULL;
	}
	if (tag) {
		if (oldstate != TCP_SYN_SENT)
			sample_rtt(tp, tag);
		report(sk, tp, tag, oldstate, v);
		/* A disconnected socket may connect again: its counters start from zero. */
		tag->retransmits = 0;
		tag->bytes_sent = 0;
		tag->bytes_received = 0;
	}
	return 0;
}

/* The tag of a socket whose role is known: its own, or client for one still connecting (a
 * SYN retransmitted, an RST answering it). */
static __always_inline struct peer_tag *tag_of(struct tcp_sock *tp, struct sock *sk)
{
	struct peer_tag *tag = bpf_sk_storage_get(&peer_tags, tp, 0, 0);
	struct peer_key key = {};

	if (tag || sk->__sk_common.skc_state != TCP_SYN_SENT)
		return tag;
	if (fill_key(&key, sk, PEER_CLIENT))
		return NULL;
	tag = bpf_sk_storage_get(&peer_tags, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (tag)
		tag->key = key;
	return tag;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(peer_retransmit, struct sock *sk, struct sk_buff *skb)
{
	struct peer_tag *tag;
	struct tcp_sock *tp;

	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	tag = tag_of(tp, sk);
	if (tag)
		report(sk, tp, tag, sk->__sk_common.skc_state, NULL);
	return 0;
}

/* An RST sent or received on a socket with a role. */
static __always_inline void count_reset(struct sock *sk, int sent)
{
	struct peer_counts *v;
	struct peer_tag *tag;
	struct tcp_sock *tp;

	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	tag = tag_of(tp, sk);
	if (!tag)
		return;
	v = counts_of(&tag->key);
	if (!v)
		return;
	if (sent)
		v->resets_sent += 1;
	else
		v->resets_received += 1;
}

/* sk is NULL for an RST answering a packet that found no socket (a closed port), and may be a
 * TIME_WAIT or request socket: only full sockets with a role are counted. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(peer_send_reset, struct sock *sk, struct sk_buff *skb)
{
	if (sk)
		count_reset(sk, 1);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(peer_recv_reset, struct sock *sk)
{
	count_reset(sk, 0);
	return 0;
}

/* Every packet queued to a device: only the first packets of a TCP connection whose
 * destination conntrack translated go further (two loads and a compare for the rest). The
 * packet has passed NAT by now, wherever it was done (the host's PREROUTING for a Pod's
 * connection, OUTPUT for the node's own); the client's socket, in whichever namespace, finds
 * the translation by its own side of the connection. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(peer_translated, struct sk_buff *skb)
{
	struct peer_translation to = {};
	struct peer_flow flow = {};
	unsigned long nfct, status;
	struct nf_conn *ct;
	__u16 l3;

	if (!bpf_core_field_exists(skb->_nfct))
		return 0;
	nfct = skb->_nfct;
	if ((nfct & NFCT_INFOMASK) != IP_CT_NEW)
		return 0;
	ct = (struct nf_conn *)(nfct & ~NFCT_INFOMASK);
	if (!ct)
		return 0;
	status = BPF_CORE_READ(ct, status);
	if (!(status & IPS_DST_NAT) || BPF_CORE_READ(ct, tuplehash[0].tuple.dst.protonum) != IPPROTO_TCP)
		return 0;
	l3 = BPF_CORE_READ(ct, tuplehash[0].tuple.src.l3num);
	if (l3 == NFPROTO_IPV4) {
		flow.family = 4;
		bpf_core_read(flow.saddr, 4, &ct->tuplehash[0].tuple.src.u3);
		bpf_core_read(flow.daddr, 4, &ct->tuplehash[0].tuple.dst.u3);
		bpf_core_read(to.addr, 4, &ct->tuplehash[1].tuple.src.u3);
	} else if (l3 == NFPROTO_IPV6) {
		flow.family = 6;
		bpf_core_read(flow.saddr, 16, &ct->tuplehash[0].tuple.src.u3);
		bpf_core_read(flow.daddr, 16, &ct->tuplehash[0].tuple.dst.u3);
		bpf_core_read(to.addr, 16, &ct->tuplehash[1].tuple.src.u3);
	} else {
		return 0;
	}
	flow.sport = BPF_CORE_READ(ct, tuplehash[0].tuple.src.u.all);
	flow.dport = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.u.all);
	to.port = BPF_CORE_READ(ct, tuplehash[1].tuple.src.u.all);
	bpf_map_update_elem(&peer_flows, &flow, &to, BPF_ANY);
	return 0;
}

/* Run by user space at a collection in the namespaces that hold open connections with a role
 * (more opened than closed; a tcp iterator walks the sockets of the namespace it is created
 * in): an RTT sample of each, and what its counters gained so far. Writes one byte per
 * connection sampled. */
SEC("iter/tcp")
int peer_sample(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct peer_tag *tag;
	struct tcp_sock *tp;
	struct sock *sk;
	__u8 sampled = 1;
	int state;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc); /* NULL for TIME_WAIT and request sockets */
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	state = skc->skc_state;
	if (state == TCP_LISTEN || state == TCP_SYN_SENT || state == TCP_CLOSE)
		return 0;
	tag = bpf_sk_storage_get(&peer_tags, tp, 0, 0);
	if (!tag)
		return 0;
	sample_rtt(tp, tag);
	report(sk, tp, tag, state, NULL);
	bpf_seq_write(ctx->meta->seq, &sampled, sizeof(sampled));
	return 0;
}

/* The benchmark's floor, never attached by the agent: programs that do nothing on the two
 * hooks that run on every connection (a state change, a packet queued), what those hooks cost
 * before any counting. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(floor_state, struct sock *sk, int oldstate, int newstate)
{
	return 0;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(floor_queue, struct sk_buff *skb)
{
	return 0;
}
