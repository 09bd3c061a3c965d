/* The key and layout shared by the BPF programs and user space (src/probes/packetloss/bpf.rs
 * mirrors it with #[repr(C)]; a test there checks both declare the same fields). */
#ifndef PACKETLOSS_H
#define PACKETLOSS_H

/* One counter per (network namespace, drop reason, device). ifindex lets user space give a
 * drop on the host side of a Pod's veth to that Pod; 0 when the skb had no device. */
struct drop_key {
	__u32 netns;   /* inode of the namespace (skb->dev's, else skb->sk's); 0 when unknown */
	__u32 reason;  /* enum skb_drop_reason of the running kernel */
	__u32 ifindex; /* skb->dev->ifindex in that namespace, or 0 */
	__u32 pad;
};

#define DROPS_MAX_ENTRIES 16384

/* The per-CPU cache in front of `drops` (packetloss.bpf.c): one slot holds one key's count on
 * one CPU for good. `reason` is the last key word a claim writes and `count` is written after
 * it, so a slot with count 0 is free, whatever its key words say. */
#define DROP_SLOTS 64

struct drop_slot {
	__u32 netns;
	__u32 ifindex;
	__u32 pad;
	__u32 reason;
	__u64 count;
};

struct drop_slots {
	struct drop_slot slot[DROP_SLOTS];
};

#endif
