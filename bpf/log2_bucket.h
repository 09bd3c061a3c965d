/* The log2 histogram buckets the programs count latencies into: bucket i holds values up to
 * 2^(i+4) microseconds, so (2^(i+3), 2^(i+4)] for i > 0, and the last one the rest. User space
 * folds them into the exported buckets (src/probes/peers, src/probes/dns). */
#ifndef LOG2_BUCKET_H
#define LOG2_BUCKET_H

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* The bucket of `us` microseconds among `buckets`. */
static __always_inline __u32 log2_bucket(__u64 us, __u32 buckets)
{
	__u32 b = 0;

	if (us > 16)
		b = log2_u64(us - 1) - 3;
	if (b >= buckets)
		b = buckets - 1;
	return b;
}

#endif
