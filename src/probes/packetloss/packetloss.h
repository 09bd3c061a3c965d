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

#endif
