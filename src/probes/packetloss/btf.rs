//! Reads the names of `enum skb_drop_reason` from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so that drop reasons are never hard-coded numbers: they move
//! between kernel versions.
//!
//! Hand-written because the BTF parser of `aya-obj` keeps its type and string accessors
//! crate-private; reading one enum needs only the header, a walk over the type records (each
//! record's length follows from its kind) and the string section.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;
/// Longest name read, terminator included: the kernel's KSYM_NAME_LEN, beyond which it
/// rejects a BTF identifier. Bounding names keeps the work and the copies proportional to the
/// blob even when many records name one huge string.
const MAX_NAME_LEN: usize = 512;

/// The enum's values by number, names without the `SKB_DROP_REASON_` (or `SKB_`) prefix
/// (`1 => "CONSUMED"`, `2 => "NOT_SPECIFIED"`, `3 => "NO_SOCKET"`, ...). `NOT_DROPPED_YET` and
/// `CONSUMED` are in the enum but are not drops: see [`is_drop`].
pub fn drop_reasons(btf: &[u8]) -> Result<BTreeMap<u32, String>> {
    let variants = enum_variants(btf, "skb_drop_reason")?;
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

/// The (name, value) pairs of the enum called `wanted` (ENUM or ENUM64).
pub fn enum_variants(btf: &[u8], wanted: &str) -> Result<Vec<(String, i64)>> {
    let u16_at = |o: usize| -> Result<u16> {
        let b = btf.get(o..o + 2).context("BTF truncated")?;
        Ok(u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| -> Result<u32> {
        let b = btf.get(o..o + 4).context("BTF truncated")?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(0)? != BTF_MAGIC {
        bail!("not BTF (bad magic), or BTF of another byte order");
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let types_start = hdr_len
        .checked_add(type_off)
        .context("BTF header overflows")?;
    let types_end = types_start
        .checked_add(type_len)
        .context("BTF header overflows")?;
    let strs_start = hdr_len
        .checked_add(str_off)
        .context("BTF header overflows")?;
    let strs = btf
        .get(strs_start..strs_start.saturating_add(str_len))
        .context("BTF string section out of bounds")?;
    if types_end > btf.len() {
        bail!("BTF type section out of bounds");
    }
    let name = |off: u32| -> Result<&str> {
        let s = strs
            .get(off as usize..)
            .context("BTF string offset out of bounds")?;
        let end = s[..s.len().min(MAX_NAME_LEN)]
            .iter()
            .position(|b| *b == 0)
            .context("BTF string not terminated within KSYM_NAME_LEN")?;
        std::str::from_utf8(&s[..end]).context("BTF string not UTF-8")
    };
    // Whether a type is named `wanted`, without reading the rest of its name.
    let named_wanted = |off: u32| {
        strs.get(off as usize..)
            .and_then(|s| s.get(..wanted.len() + 1))
            .is_some_and(|s| &s[..wanted.len()] == wanted.as_bytes() && s[wanted.len()] == 0)
    };

    let mut pos = types_start;
    while pos < types_end {
        let name_off = u32_at(pos)?;
        let info = u32_at(pos + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let body = pos + 12;
        let extra = match kind {
            1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
            3 => 12,                   // ARRAY
            4 | 5 | 15 => vlen * 12,   // STRUCT, UNION, DATASEC
            6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
            19 => vlen * 12,           // ENUM64
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            other => bail!("unknown BTF kind {other} at offset {pos}"),
        };
        if (kind == KIND_ENUM || kind == KIND_ENUM64) && name_off != 0 && named_wanted(name_off) {
            let signed = info >> 31 == 1;
            let mut out = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let (v_name, value) = if kind == KIND_ENUM {
                    let at = body + i * 8;
                    let raw = u32_at(at + 4)?;
                    let v = if signed {
                        i64::from(raw as i32)
                    } else {
                        i64::from(raw)
                    };
                    (u32_at(at)?, v)
                } else {
                    let at = body + i * 12;
                    let v = (u64::from(u32_at(at + 8)?) << 32) | u64::from(u32_at(at + 4)?);
                    (u32_at(at)?, v as i64)
                };
                out.push((name(v_name)?.to_string(), value));
            }
            return Ok(out);
        }
        pos = body.checked_add(extra).context("BTF record overflows")?;
    }
    bail!("enum {wanted} not found in BTF")
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
        b.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
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
