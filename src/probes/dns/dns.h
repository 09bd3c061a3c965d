/* The keys and counters shared by the BPF program and user space (src/probes/dns/bpf.rs
 * mirrors them with #[repr(C)]; a test there checks both declare the same fields). */
#ifndef DNS_H
#define DNS_H

#define DNS_MAX_ENTRIES 4096
#define DNS_FLIGHTS_MAX_ENTRIES 16384
#define DNS_LABELS_MAX_ENTRIES 4096

/* Query types and answer codes with counters of their own; the rest is the last slot. */
#define DNS_TYPES 5   /* A, AAAA, SRV, PTR, other */
#define DNS_RCODES 5  /* NOERROR, NXDOMAIN, SERVFAIL, REFUSED, other */

/* Latency buckets: bucket i counts answers up to 2^(i+4) microseconds (16 us ... 8.4 s);
 * the last counts the rest. */
#define DNS_BUCKETS 21

/* Slots of `dns_overflow`: what could not be counted because a map was full. */
#define UNCOUNTED_COUNTS 0
#define UNCOUNTED_FLIGHTS 1

/* One set of counters per (network namespace, resolver, transport). */
struct dns_key {
	__u64 netns;     /* the namespace's cookie (bpf_get_netns_cookie, SO_NETNS_COOKIE) */
	__u8 addr[16];   /* the resolver's address, network order; IPv4 in the first 4 bytes */
	__u8 family;     /* 4 or 6 */
	__u8 proto;      /* 17 (UDP) or 6 (TCP) */
	__u8 pad[6];
};

struct dns_counts {
	__u64 queries[DNS_TYPES];   /* queries sent, by question type */
	__u64 answers[DNS_RCODES];  /* answers to them received within the timeout, by rcode */
	__u64 empty;                /* NOERROR answers without records (ANCOUNT 0) */
	__u64 late;                 /* answers received after the timeout: timeouts */
	__u64 malformed;            /* DNS-port packets that do not parse as a query or answer */
	__u64 latency[DNS_BUCKETS]; /* query -> answer, of the answers within the timeout */
	__u64 latency_sum_us;
	__u64 expansions;           /* NXDOMAIN answers for a name whose first label the namespace
				     * then resolved (NOERROR) within the timeout: search-path
				     * expansion */
};

/* A query waiting for its answer: the client's port and the query's id in its namespace.
 * No address: NAT in the client's own namespace (a DNAT of a ClusterIP in OUTPUT, for the
 * node's processes; an SNAT) shows the query after translation and the answer before it. */
struct dns_flight {
	__u64 netns;
	__be16 client_port;
	__u16 id;        /* network order */
	__u8 proto;
	__u8 pad[3];
};

struct dns_sent {
	__u64 at_ns;       /* bpf_ktime_get_ns() when the query left */
	__u32 first_label; /* a hash of the question's first label (FNV-1a) */
	__u8 family;       /* the resolver's, as counted */
	__u8 pad[3];
	__u8 resolver[16]; /* the key the query was counted under: its answer is counted there */
};

/* NXDOMAIN answers of a namespace not yet followed by a NOERROR for the same first label. */
struct dns_label {
	__u64 netns;
	__u32 first_label;
	__u32 pad;
};

struct dns_nxdomains {
	__u64 count;
	__u64 at_ns;       /* the last one */
};

#endif
