//! The kernel's BTF cut down to what one BPF object can ask of it.
//!
//! aya relocates an object against a parsed BTF (`aya::Btf`), and parsed whole the kernel's
//! (126,622 types, 5.5 MB here) holds ~23 MiB while it lives: it was the agent's start-up
//! memory peak, which the DaemonSet's limit must hold. An object asks only a few hundred of
//! those types:
//! - its CO-RE relocations find target types by name (the name of a local type, its `___flavor`
//!   left out) and walk their members through embedded structs, unions and arrays to a field,
//!   whose type they compare by kind (a pointer is compared as a pointer, never followed);
//! - its `tp_btf/X` and `iter/X` programs attach by the kernel's id of `btf_trace_X` /
//!   `bpf_iter_X`.
//!
//! So the BTF made here holds the types named like a type of the object's own BTF and every
//! type they reach other than through a pointer, numbered anew (a pointer to a type left out
//! points to `void`), and the attach points' ids are looked up here, in the kernel's numbering.
//! Relocations that compare whole types through pointers or use ids (`bpf_core_type_*`) would
//! need more: an object with one is refused, and the caller parses the BTF whole.
//!
//! Hand-written because no crate filters BTF: aya parses all of it, and libbpf's
//! `btf__*` API would bring a C library for this alone. The records are read with [`super::raw`]
//! (their framing only) and copied as they are, but for the type ids and names they hold.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail, ensure};
use aya_obj::btf::BtfKind;
use object::{Object, ObjectSection};

use super::raw::*;

/// CO-RE relocation kinds that compare whole types (`TYPE_ID_LOCAL`, `TYPE_ID_TARGET`,
/// `TYPE_EXISTS`, `TYPE_SIZE`, `TYPE_MATCHES`), following pointers.
const WHOLE_TYPE_RELOCATIONS: [u32; 5] = [6, 7, 8, 9, 12];

/// What an object asks of the kernel's BTF, answered.
pub struct Lean {
    /// Raw BTF: the types the object's relocations can reach.
    pub btf: Vec<u8>,
    /// The kernel's ids of the attach points (`btf_trace_X`, `bpf_iter_X`) of its programs.
    pub attach: HashMap<String, u32>,
}

/// The kernel's BTF (`kernel`, raw) cut down to what `object` (an ELF BPF object) can ask.
pub fn for_object(kernel: &[u8], object: &[u8]) -> Result<Lean> {
    let asked = asked(object)?;
    let kernel = Types::parse(kernel).context("kernel BTF")?;
    // An attach point this kernel lacks is left out: the program that needs it fails to load,
    // naming it, as it would against the whole BTF, and the object's others still load.
    let attach = asked
        .attach
        .into_iter()
        .filter_map(|(name, kind)| {
            let id = kernel.id_of(name.as_bytes(), kind as u32)?;
            Some((name, id))
        })
        .collect();
    Ok(Lean {
        btf: keep(&kernel, &asked.types),
        attach,
    })
}

/// The names an object may look up in the kernel's BTF.
struct Asked {
    /// Names of types, their flavors left out.
    types: HashSet<Vec<u8>>,
    /// Attach points: a kernel type's name and kind.
    attach: Vec<(String, BtfKind)>,
}

/// The kernel types that `object`'s programs attach to, by their sections' names (an object
/// that cannot be read has none).
pub fn attach_points(object: &[u8]) -> Vec<(String, BtfKind)> {
    let Ok(elf) = object::File::parse(object) else {
        return Vec::new();
    };
    elf.sections()
        .filter_map(|section| attach_point(section.name().ok()?))
        .collect()
}

fn attach_point(section: &str) -> Option<(String, BtfKind)> {
    [
        ("tp_btf/", "btf_trace_", BtfKind::Typedef),
        ("iter/", "bpf_iter_", BtfKind::Func),
    ]
    .into_iter()
    .find_map(|(prefix, kernel, kind)| {
        Some((format!("{kernel}{}", section.strip_prefix(prefix)?), kind))
    })
}

fn asked(object: &[u8]) -> Result<Asked> {
    let elf = object::File::parse(object).context("BPF object")?;
    let section = |name: &str| -> Result<&[u8]> {
        elf.section_by_name(name)
            .with_context(|| format!("BPF object has no {name} section"))?
            .data()
            .with_context(|| format!("BPF object's {name} section"))
    };
    let btf = Types::parse(section(".BTF")?).context("BPF object's BTF")?;
    if let Some(ext) = elf.section_by_name(".BTF.ext") {
        let ext = ext.data().context("BPF object's .BTF.ext section")?;
        if let Some(kind) = relocation_kinds(ext)?
            .into_iter()
            .find(|k| WHOLE_TYPE_RELOCATIONS.contains(k))
        {
            bail!("the object compares whole types (CO-RE relocation kind {kind})");
        }
    }
    let mut types = HashSet::new();
    for id in 1..=btf.count() {
        let name = flavorless(btf.name(id)?);
        if !name.is_empty() {
            types.insert(name.to_vec());
        }
    }
    Ok(Asked {
        types,
        attach: attach_points(object),
    })
}

/// The kinds of the CO-RE relocations in a `.BTF.ext` section.
fn relocation_kinds(ext: &[u8]) -> Result<Vec<u32>> {
    let header_len = u32_at(ext, 4)? as usize;
    // Older compilers wrote no relocation part (a 24-byte header).
    if header_len < 32 {
        return Ok(Vec::new());
    }
    let start = header_len + u32_at(ext, 24)? as usize;
    let end = start + u32_at(ext, 28)? as usize;
    let part = ext
        .get(start..end)
        .context(".BTF.ext relocations out of bounds")?;
    if part.is_empty() {
        return Ok(Vec::new());
    }
    let record = u32_at(part, 0)? as usize;
    ensure!(record >= 16, ".BTF.ext relocation record of {record} bytes");
    let mut kinds = Vec::new();
    let mut at = 4;
    while at < part.len() {
        let count = u32_at(part, at + 4)? as usize;
        at += 8;
        for _ in 0..count {
            kinds.push(u32_at(part, at + 12)?);
            at += record;
        }
    }
    Ok(kinds)
}

/// A type's name without the `___flavor` that local definitions may carry (CO-RE matches the
/// rest).
fn flavorless(name: &[u8]) -> &[u8] {
    name.windows(3)
        .position(|w| w == b"___")
        .map_or(name, |at| &name[..at])
}

/// Where the record of `id` holds type ids (byte offsets), each with whether it is a
/// pointer's.
fn type_fields(types: &Types, id: u32) -> Vec<(usize, bool)> {
    let info = u32_at(types.record(id), 4).unwrap_or(0);
    let vlen = (info & 0xffff) as usize;
    match kind(info) {
        KIND_PTR => vec![(8, true)],
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG | KIND_FUNC
        | KIND_VAR | KIND_DECL_TAG => vec![(8, false)],
        KIND_ARRAY => vec![(12, false), (16, false)],
        KIND_STRUCT | KIND_UNION => (0..vlen).map(|i| (16 + 12 * i, false)).collect(),
        KIND_DATASEC => (0..vlen).map(|i| (12 + 12 * i, false)).collect(),
        KIND_FUNC_PROTO => std::iter::once((8, false))
            .chain((0..vlen).map(|i| (16 + 8 * i, false)))
            .collect(),
        _ => Vec::new(),
    }
}

/// A BTF of the types named in `names` (flavor left out) and those they reach other than
/// through a pointer, in their order, numbered from 1.
fn keep(kernel: &Types, names: &HashSet<Vec<u8>>) -> Vec<u8> {
    let count = kernel.count();
    let mut kept = vec![false; count as usize + 1];
    let mut pending = Vec::new();
    for id in 1..=count {
        if kernel
            .name(id)
            .is_ok_and(|name| !name.is_empty() && names.contains(flavorless(name)))
        {
            kept[id as usize] = true;
            pending.push(id);
        }
    }
    while let Some(id) = pending.pop() {
        for (at, through_pointer) in type_fields(kernel, id) {
            let target = u32_at(kernel.record(id), at).unwrap_or(0);
            if let Some(seen) = kept.get_mut(target as usize)
                && target != 0
                && !through_pointer
                && !*seen
            {
                *seen = true;
                pending.push(target);
            }
        }
    }
    // The new ids: 0 (`void`) for a type left out, reached only through pointers.
    let mut renumbered = vec![0u32; count as usize + 1];
    let mut next = 1;
    for id in 1..=count {
        if kept[id as usize] {
            renumbered[id as usize] = next;
            next += 1;
        }
    }

    let mut strings = Strings::default();
    let mut types = Vec::new();
    for id in (1..=count).filter(|&id| kept[id as usize]) {
        let record = kernel.record(id);
        let start = types.len();
        types.extend_from_slice(record);
        let mut put = |at: usize, word: u32| {
            types[start + at..start + at + 4].copy_from_slice(&word.to_ne_bytes())
        };
        for (at, _) in type_fields(kernel, id) {
            let target = u32_at(record, at).unwrap_or(0) as usize;
            put(at, renumbered.get(target).copied().unwrap_or(0));
        }
        let info = u32_at(record, 4).unwrap_or(0);
        let vlen = (info & 0xffff) as usize;
        // Where names sit in the record: its own, then its members', enumerators' or
        // parameters'.
        let member_names = match kind(info) {
            KIND_STRUCT | KIND_UNION | KIND_ENUM64 => (0..vlen).map(|i| 12 + 12 * i).collect(),
            KIND_ENUM | KIND_FUNC_PROTO => (0..vlen).map(|i| 12 + 8 * i).collect(),
            _ => Vec::new(),
        };
        for at in std::iter::once(0).chain(member_names) {
            let name = u32_at(record, at)
                .and_then(|offset| kernel.string(offset))
                .unwrap_or_default();
            put(at, strings.add(name));
        }
    }

    let strings = strings.bytes;
    let mut out = Vec::with_capacity(HEADER_LEN + types.len() + strings.len());
    out.extend_from_slice(&MAGIC.to_ne_bytes());
    out.extend_from_slice(&[1, 0]); // version 1, no flags
    for word in [
        HEADER_LEN as u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&word.to_ne_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(&strings);
    out
}

/// A BTF string section being written: each string once, the empty one at offset 0.
struct Strings<'a> {
    bytes: Vec<u8>,
    offsets: HashMap<&'a [u8], u32>,
}

impl Default for Strings<'_> {
    fn default() -> Self {
        Self {
            bytes: vec![0],
            offsets: HashMap::from([(&b""[..], 0)]),
        }
    }
}

impl<'a> Strings<'a> {
    fn add(&mut self, s: &'a [u8]) -> u32 {
        *self.offsets.entry(s).or_insert_with(|| {
            let offset = self.bytes.len() as u32;
            self.bytes.extend_from_slice(s);
            self.bytes.push(0);
            offset
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF of `types` (name, kind, `size_or_type`, what follows the header as words) with
    /// names put in its string section.
    fn btf(types: &[(&str, u32, u32, &[u32])], member_names: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut offset_of = |s: &str| -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let member_offsets: Vec<u32> = member_names.iter().map(|n| offset_of(n)).collect();
        let mut records = Vec::new();
        for (name, kind, size_or_type, rest) in types {
            let vlen = match *kind {
                KIND_STRUCT => rest.len() / 3,
                _ => 0,
            } as u32;
            for word in [offset_of(name), kind << 24 | vlen, *size_or_type] {
                records.extend_from_slice(&word.to_ne_bytes());
            }
            for (i, word) in rest.iter().enumerate() {
                // A member's name word holds an index into `member_names`.
                let word = if *kind == KIND_STRUCT && i % 3 == 0 {
                    member_offsets[*word as usize]
                } else {
                    *word
                };
                records.extend_from_slice(&word.to_ne_bytes());
            }
        }
        let mut out = MAGIC.to_ne_bytes().to_vec();
        out.extend_from_slice(&[1, 0]);
        let len = records.len() as u32;
        for word in [24, 0, len, len, strings.len() as u32] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend(records);
        out.extend(strings);
        out
    }

    #[test]
    fn named_types_and_what_they_embed_are_kept_and_renumbered_pointees_are_not() {
        // 1 int; 2 struct sock { int a; struct net *net; struct inner in; void *v; };
        // 3 ptr -> 4 struct net { int x; }; 5 struct inner { int y; }; 6 struct other;
        // 7 ptr -> void; 8 struct bad { ... *99 } (a reference past the end).
        let kernel = btf(
            &[
                ("int", KIND_INT, 4, &[32]),
                (
                    "sock",
                    KIND_STRUCT,
                    24,
                    &[0, 1, 0, 1, 3, 64, 2, 5, 128, 3, 7, 160],
                ),
                ("", KIND_PTR, 4, &[]),
                ("net", KIND_STRUCT, 4, &[4, 1, 0]),
                ("", KIND_STRUCT, 4, &[5, 1, 0]),
                ("other", KIND_STRUCT, 4, &[6, 1, 0]),
                ("", KIND_PTR, 0, &[]),
                ("bad", KIND_STRUCT, 4, &[7, 99, 0]),
            ],
            &["a", "net", "in", "v", "x", "y", "z", "w"],
        );
        let names: HashSet<Vec<u8>> = [b"sock".to_vec(), b"bad".to_vec()].into();
        let parsed = Types::parse(&kernel).unwrap_or_else(|e| panic!("{e:#}"));
        let bytes = keep(&parsed, &names);
        let lean = Types::parse(&bytes).unwrap_or_else(|e| panic!("{e:#}"));
        // int, sock, the pointer to net, inner, the pointer to void, bad: renumbered 1-6.
        let word = |id, at| u32_at(lean.record(id), at).unwrap_or(u32::MAX);
        let kinds: Vec<u32> = (1..=lean.count()).map(|id| kind(word(id, 4))).collect();
        assert_eq!(
            kinds,
            [
                KIND_INT,
                KIND_STRUCT,
                KIND_PTR,
                KIND_STRUCT,
                KIND_PTR,
                KIND_STRUCT
            ]
        );
        let name = |id| String::from_utf8_lossy(lean.name(id).unwrap_or_default()).into_owned();
        assert_eq!(
            [name(1), name(2), name(4), name(6)],
            ["int", "sock", "", "bad"]
        );
        assert_eq!(word(3, 8), 0, "a pointer to a type left out points to void");
        // Members keep their names, their types renumbered.
        let members: Vec<(String, u32)> = (0..4)
            .map(|i| {
                let n = lean.string(word(2, 12 + 12 * i)).unwrap_or_default();
                (
                    String::from_utf8_lossy(n).into_owned(),
                    word(2, 16 + 12 * i),
                )
            })
            .collect();
        assert_eq!(
            members,
            [
                ("a".into(), 1),
                ("net".into(), 3),
                ("in".into(), 4),
                ("v".into(), 5)
            ]
        );
        assert_eq!(word(6, 16), 0, "a reference past the end becomes void");
        // And aya reads it.
        let aya = aya::Btf::parse(&bytes, aya::Endianness::default());
        assert!(aya.is_ok(), "{aya:?}");
        // Ids of attach points are the input's.
        assert_eq!(parsed.id_of(b"other", KIND_STRUCT), Some(6));
        assert_eq!(parsed.id_of(b"other", KIND_TYPEDEF), None);
    }

    #[test]
    fn an_attach_point_the_kernel_lacks_is_left_out() {
        static PEERS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/peers.bpf.o"));
        let kernel = btf(
            &[
                ("int", KIND_INT, 4, &[32]),
                ("btf_trace_tcp_send_reset", KIND_TYPEDEF, 1, &[]),
            ],
            &[],
        );
        let lean = for_object(&kernel, PEERS).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            lean.attach,
            HashMap::from([("btf_trace_tcp_send_reset".to_string(), 2)])
        );
    }

    #[test]
    fn a_flavor_is_left_out_of_names() {
        assert_eq!(flavorless(b"sock___old"), b"sock");
        assert_eq!(flavorless(b"sock"), b"sock");
        assert_eq!(flavorless(b"___x"), b"");
    }

    #[test]
    fn an_unknown_kind_or_a_short_record_is_an_error() {
        let unknown = btf(&[("int", 31, 4, &[])], &[]);
        let e = Types::parse(&unknown).err().map(|e| format!("{e:#}"));
        assert_eq!(e.as_deref(), Some("type 1 is of unknown kind 31"));
        let mut short = btf(&[("s", KIND_STRUCT, 4, &[0, 1, 0])], &["m"]);
        // The struct claims two members but holds one.
        let info_at = 24 + 4;
        short[info_at] = 2;
        let e = Types::parse(&short).err().map(|e| format!("{e:#}"));
        assert!(e.as_deref().is_some_and(|e| e.contains("type 1")), "{e:?}");
    }
}
