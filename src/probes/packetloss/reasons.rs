//! Reads the names of `enum skb_drop_reason` from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so that drop reasons are never hard-coded numbers: they move
//! between kernel versions.
//!
//! Without BTF, the tracepoint's print format names them instead.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::sources::kernel_btf;

/// The enum's values by number, names without the `SKB_DROP_REASON_` (or `SKB_`) prefix
/// (`1 => "CONSUMED"`, `2 => "NOT_SPECIFIED"`, `3 => "NO_SOCKET"`, ...). `NOT_DROPPED_YET` and
/// `CONSUMED` are in the enum but are not drops: see [`is_drop`].
pub fn drop_reasons(btf: &[u8]) -> Result<BTreeMap<u32, String>> {
    let variants = kernel_btf::enum_variants(btf, "skb_drop_reason")?;
    Ok(variants
        .into_iter()
        .filter_map(|(name, value)| {
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))?;
            // Markers, not reasons: MAX bounds the enum, SUBSYS_MASK splits it.
            if short == "MAX" || short.starts_with("SUBSYS_") {
                return None;
            }
            Some((u32::try_from(value).ok()?, short.to_string()))
        })
        .collect())
}

/// Whether a reason name is a drop (the enum also names the non-drops).
pub fn is_drop(name: &str) -> bool {
    !matches!(name, "NOT_DROPPED_YET" | "CONSUMED")
}

/// Reason names from the tracepoint's print format (`{ 2, "NOT_SPECIFIED" }, ...`): the
/// kernel's own list, used when there is no BTF.
pub fn reasons_from_format(format: &str) -> Result<BTreeMap<u32, String>> {
    let list = format
        .split("__print_symbolic(REC->reason,")
        .nth(1)
        .context("no reason list in the kfree_skb format")?;
    let mut out = BTreeMap::new();
    for item in list.split('{').skip(1) {
        let Some((num, rest)) = item.split_once(',') else {
            continue;
        };
        let (Ok(num), Some(name)) = (num.trim().parse::<u32>(), rest.split('"').nth(1)) else {
            continue;
        };
        if name != "MAX" {
            out.insert(num, name.to_string());
        }
    }
    if out.is_empty() {
        bail!("empty reason list in the kfree_skb format");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one INT and one ENUM, built by hand.
    fn blob() -> Vec<u8> {
        let strs = b"\0int\0skb_drop_reason\0SKB_DROP_REASON_NOT_SPECIFIED\0SKB_DROP_REASON_NO_SOCKET\0SKB_DROP_REASON_MAX\0";
        let off = |s: &str| {
            let hay = std::str::from_utf8(strs).unwrap();
            hay.find(&format!("\0{s}\0")).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_ne_bytes());
        // INT "int": name, info(kind 1), size, encoding
        push(off("int"));
        push(1 << 24);
        push(4);
        push(32);
        // ENUM "skb_drop_reason" with 3 values
        push(off("skb_drop_reason"));
        push((6 << 24) | 3);
        push(4);
        push(off("SKB_DROP_REASON_NOT_SPECIFIED"));
        push(2);
        push(off("SKB_DROP_REASON_NO_SOCKET"));
        push(3);
        push(off("SKB_DROP_REASON_MAX"));
        push(4);
        let mut b = Vec::new();
        b.extend_from_slice(&0xeb9fu16.to_ne_bytes());
        b.push(1);
        b.push(0);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strs.len() as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(strs);
        b
    }

    #[test]
    fn reads_the_enum() {
        let r = drop_reasons(&blob()).unwrap();
        assert_eq!(r.len(), 2);
        assert!(is_drop(&r[&3]) && !is_drop("CONSUMED"));
        assert_eq!(r[&2], "NOT_SPECIFIED");
        assert_eq!(r[&3], "NO_SOCKET");
    }

    #[test]
    fn survives_damage() {
        let b = blob();
        for n in 0..b.len() {
            let _ = drop_reasons(&b[..n]);
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0xff;
            let _ = drop_reasons(&c);
        }
        assert!(drop_reasons(b"").is_err());
    }

    /// The running kernel's BTF against the kernel's own list of the same enum, in the
    /// tracepoint's print format (`__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...)`).
    #[test]
    fn running_kernel_reasons_equal_the_tracepoint_format() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return; // a kernel without BTF: the probe reports it, nothing to check here
        };
        let r = drop_reasons(&btf).unwrap();
        for want in [
            "NO_SOCKET",
            "NETFILTER_DROP",
            "OTHERHOST",
            "IP_RPFILTER",
            "NOMEM",
            "TCP_ZEROWINDOW",
        ] {
            assert!(r.values().any(|v| v == want), "{want} missing");
        }
        let formats = [
            "/sys/kernel/tracing/events/skb/kfree_skb/format",
            "/sys/kernel/debug/tracing/events/skb/kfree_skb/format",
        ];
        let Some(format) = formats.iter().find_map(|p| std::fs::read_to_string(p).ok()) else {
            return; // tracefs not mounted here
        };
        let drops: BTreeMap<u32, String> = r.into_iter().filter(|(_, n)| is_drop(n)).collect();
        assert_eq!(drops, reasons_from_format(&format).unwrap());
    }
}
