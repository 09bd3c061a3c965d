/* The key and counters shared by the BPF program and user space (src/probes/peers/bpf.rs
 * mirrors them with #[repr(C)]; a test there checks both declare the same fields). */
#ifndef PEERS_H
#define PEERS_H

#define PEER_CLIENT 1
#define PEER_SERVER 2

/* One set of counters per (network namespace, role, port, peer address). */
struct peer_key {
	__u32 netns;    /* inode of the socket's namespace; 0 when unknown */
	__u16 port;     /* host order: the remote port (client), the local listening port (server) */
	__u8 role;      /* PEER_CLIENT or PEER_SERVER */
	__u8 family;    /* 4 or 6 */
	__u8 addr[16];  /* the peer's address, network order; IPv4 in the first 4 bytes */
};

/* Connections opened, failed by reason, and what their sockets counted. */
struct peer_counts {
	__u64 opened;   /* SYN_SENT or SYN_RECV -> ESTABLISHED */
	__u64 refused;  /* SYN_SENT -> CLOSE with ECONNREFUSED (RST answering the SYN) */
	__u64 timeout;  /* SYN_SENT -> CLOSE with ETIMEDOUT (SYN retries exhausted) */
	__u64 reset;    /* an opened connection -> CLOSE with ECONNRESET (RST received) */
	__u64 other;    /* SYN_SENT -> CLOSE otherwise (ICMP errors, closed while connecting) */
	__u64 retransmits;    /* segments retransmitted (tcp_sock.total_retrans) */
	__u64 resets_sent;    /* RSTs sent on a socket (tcp:tcp_send_reset) */
	__u64 resets_received; /* RSTs received on a socket (tcp:tcp_receive_reset) */
	__u64 bytes_sent;     /* payload acknowledged by the peer (tcp_sock.bytes_acked) */
	__u64 bytes_received; /* payload received in order (tcp_sock.bytes_received) */
	__u64 closed;   /* opened connections that closed: opened - closed are open now */
};

/* What a socket remembers: the key it is counted under (taken when it opened: a closed
 * socket has lost its local port), and how much of its own counters has been added to its
 * peer's already (each report adds the difference). */
struct peer_tag {
	struct peer_key key;
	__u32 retransmits;
	__u32 pad;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 syn_ns;   /* when a client's socket entered SYN_SENT (bpf_ktime_get_ns), or 0 */
};

/* Latency histograms of one peer key. Bucket i counts values up to 2^(i+4) microseconds
 * (16 us ... 8.4 s); the last counts the rest. Shared by all CPUs (atomic adds): one copy per
 * key, not one per CPU. */
#define PEER_BUCKETS 21

struct peer_timing {
	__u64 connect[PEER_BUCKETS]; /* client: SYN_SENT -> ESTABLISHED */
	__u64 connect_sum_us;
	__u64 rtt[PEER_BUCKETS];     /* smoothed RTT (srtt), sampled at close and each collection */
	__u64 rtt_sum_us;
};

/* A connection as its first packet left with a translated destination (an iptables DNAT
 * rule, as kube-proxy writes for a ClusterIP): the client's side, ports and addresses in
 * network order, IPv4 in the first 4 bytes. */
struct peer_flow {
	__u8 family;    /* 4 or 6 */
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__u16 pad2;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Where conntrack sent it: the address and port it was translated to. */
struct peer_translation {
	__u8 addr[16];
	__be16 port;
	__u16 pad;
};

/* Connections of a client to a translated address, by the backend they were sent to. */
struct peer_backend_key {
	struct peer_key peer; /* the client's namespace, role client, the address it connected to */
	__u8 backend[16];     /* the address conntrack translated it to (the family of peer) */
	__u16 backend_port;   /* host order */
	__u8 pad[6];
};

struct peer_backend_counts {
	__u64 opened;   /* SYN_SENT -> ESTABLISHED */
	__u64 refused;  /* SYN_SENT -> CLOSE with ECONNREFUSED */
	__u64 timeout;  /* SYN_SENT -> CLOSE with ETIMEDOUT */
	__u64 other;    /* SYN_SENT -> CLOSE otherwise */
};

#define PEERS_MAX_ENTRIES 16384
/* Translations seen and not yet matched to their socket's outcome: an LRU, since a
 * translated connection of another host (forwarded through this node) never is. */
#define PEER_FLOWS_MAX_ENTRIES 8192
#define PEER_BACKENDS_MAX_ENTRIES 4096

/* Slots of peers_overflow: which map was full. */
#define UNCOUNTED_PEERS 0
#define UNCOUNTED_TIMINGS 1
#define UNCOUNTED_BACKENDS 2

#endif
