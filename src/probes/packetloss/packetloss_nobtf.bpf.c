// SPDX-License-Identifier: GPL-2.0
/* The last fallback, for kernels without BTF: no kernel struct is read (nothing could be
 * relocated), so drops are counted by reason only, under netns 0 (the node). The offset of
 * `reason` in the tracepoint record comes from the tracepoint's format file, set by user space
 * before loading. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "packetloss.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DROPS_MAX_ENTRIES);
	__type(key, struct drop_key);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

volatile const __u32 reason_offset = 0;

SEC("tracepoint/skb/kfree_skb")
int kfree_skb_nobtf(void *ctx)
{
	struct drop_key key = {};
	__u64 *v, one = 1;
	__u32 zero = 0;

	if (bpf_probe_read_kernel(&key.reason, sizeof(key.reason), (char *)ctx + reason_offset))
		return 0;
	v = bpf_map_lookup_elem(&drops, &key);
	if (v) {
		*v += 1;
		return 0;
	}
	if (bpf_map_update_elem(&drops, &key, &one, BPF_NOEXIST) == 0)
		return 0;
	v = bpf_map_lookup_elem(&drops, &key);
	if (!v)
		v = bpf_map_lookup_elem(&overflow, &zero);
	if (v)
		*v += 1;
	return 0;
}
