/* Shared by bpf/socksummary.bpf.c and src/sources/socket_storage.rs (which mirrors it with
 * #[repr(C)]; a test there checks both declare the same fields). */
#ifndef SOCKSUMMARY_H
#define SOCKSUMMARY_H

/* What each TCP socket carries in its socket storage. */
struct sock_tag {
	__u32 netns; /* inode of the socket's network namespace */
	__u32 pad;
};

/* Per network namespace, summed by one pass over every tagged socket. */
struct ns_summary {
	__u64 established;  /* sockets in ESTABLISHED */
	__u64 rx_queue;     /* rcv_nxt - copied_seq over ESTABLISHED (ss Recv-Q) */
	__u64 tx_queue;     /* write_seq - snd_una over ESTABLISHED (ss Send-Q) */
	__u64 accept_queue; /* sk_ack_backlog over LISTEN (ss Recv-Q of listeners) */
};

#define SUMMARY_MAX_ENTRIES 16384

#endif
