//! Raw BTF, as the kernel lays it out (Documentation/bpf/btf.rst): a header, type records
//! found by id (each record's length follows from its kind), and a string section. Only the
//! framing is read here; what a caller makes of the records is its own.
//!
//! Hand-written because no crate reads BTF this way: aya-obj's parser keeps its accessors
//! crate-private and turns every type into a 72-byte record (~23 MiB for the kernel's), and
//! libbpf's `btf__*` API would bring a C library for this alone.

use anyhow::{Context, Result, bail, ensure};

pub const MAGIC: u16 = 0xeb9f;
pub const HEADER_LEN: usize = 24;
const RECORD_LEN: usize = 12;
/// Longest name read, terminator included: the kernel's KSYM_NAME_LEN, beyond which it
/// rejects a BTF identifier. Bounding names keeps the work proportional to the blob even when
/// many records name one huge string.
const MAX_NAME_LEN: usize = 512;

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
pub const KIND_FWD: u32 = 7;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;
pub const KIND_FLOAT: u32 = 16;
pub const KIND_DECL_TAG: u32 = 17;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

/// The word at byte `at` of `data`, in this machine's byte order.
pub fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = at
        .checked_add(4)
        .and_then(|end| data.get(at..end))
        .with_context(|| format!("truncated at byte {at}"))?;
    Ok(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The kind of a type record's `info` word.
pub fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

/// Raw BTF: its type records, found by id, and its strings.
pub struct Types<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Where the record of type `id` starts in `types`, at `id - 1` (id 0 is `void`).
    starts: Vec<u32>,
}

impl<'a> Types<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let magic = data.get(..2).context("truncated header")?;
        ensure!(
            u16::from_ne_bytes([magic[0], magic[1]]) == MAGIC,
            "not BTF (bad magic), or BTF of another byte order"
        );
        let header_len = u32_at(data, 4)? as usize;
        ensure!(header_len >= HEADER_LEN, "header of {header_len} bytes");
        let part = |off: usize| -> Result<&'a [u8]> {
            let start = header_len.checked_add(u32_at(data, off)? as usize);
            let len = u32_at(data, off + 4)? as usize;
            start
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| data.get(range))
                .with_context(|| format!("section at header byte {off} out of bounds"))
        };
        let types = part(8)?;
        let strings = part(16)?;
        ensure!(
            u32::try_from(types.len()).is_ok(),
            "type section over 4 GiB"
        );
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(at as u32);
            let id = starts.len();
            let info = u32_at(types, at + 4).with_context(|| format!("type {id}"))?;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind(info) {
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                other => bail!("type {id} is of unknown kind {other}"),
            };
            at += RECORD_LEN + extra;
            ensure!(at <= types.len(), "type {id} runs past the type section");
        }
        Ok(Self {
            types,
            strings,
            starts,
        })
    }

    /// How many types there are (ids 1..=count).
    pub fn count(&self) -> u32 {
        self.starts.len() as u32
    }

    /// The record of type `id` (1..=count): its 12-byte header and what follows it; empty for
    /// an id out of range.
    pub fn record(&self, id: u32) -> &'a [u8] {
        let Some(&start) = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.starts.get(i))
        else {
            return &[];
        };
        let end = self
            .starts
            .get(id as usize)
            .map_or(self.types.len(), |&s| s as usize);
        &self.types[start as usize..end]
    }

    /// The string at `offset`, without its terminator.
    pub fn string(&self, offset: u32) -> Result<&'a [u8]> {
        let rest = self
            .strings
            .get(offset as usize..)
            .with_context(|| format!("string offset {offset} out of bounds"))?;
        let len = rest[..rest.len().min(MAX_NAME_LEN)]
            .iter()
            .position(|&b| b == 0)
            .with_context(|| {
                format!("string at {offset} not terminated within {MAX_NAME_LEN} bytes")
            })?;
        Ok(&rest[..len])
    }

    /// The name of type `id`.
    pub fn name(&self, id: u32) -> Result<&'a [u8]> {
        self.string(u32_at(self.record(id), 0)?)
    }

    /// The `info` word of type `id` (kind, member count, flags).
    pub fn info(&self, id: u32) -> Result<u32> {
        u32_at(self.record(id), 4)
    }

    /// The id of the type named `name` of kind `kind_wanted`.
    pub fn id_of(&self, name: &[u8], kind_wanted: u32) -> Option<u32> {
        (1..=self.count()).find(|&id| {
            self.info(id).is_ok_and(|info| kind(info) == kind_wanted)
                && self.name(id).is_ok_and(|n| n == name)
        })
    }

    /// The (name, value) pairs of the enum (ENUM or ENUM64) called `wanted`.
    pub fn enum_variants(&self, wanted: &str) -> Result<Vec<(String, i64)>> {
        let id = self
            .id_of(wanted.as_bytes(), KIND_ENUM)
            .or_else(|| self.id_of(wanted.as_bytes(), KIND_ENUM64))
            .with_context(|| format!("enum {wanted} not found in BTF"))?;
        let record = self.record(id);
        let info = self.info(id)?;
        let signed = info >> 31 == 1;
        let vlen = (info & 0xffff) as usize;
        let mut out = Vec::with_capacity(vlen);
        for i in 0..vlen {
            let (name, value) = if kind(info) == KIND_ENUM {
                let at = RECORD_LEN + i * 8;
                let raw = u32_at(record, at + 4)?;
                let value = if signed {
                    i64::from(raw as i32)
                } else {
                    i64::from(raw)
                };
                (u32_at(record, at)?, value)
            } else {
                let at = RECORD_LEN + i * 12;
                let value =
                    (u64::from(u32_at(record, at + 8)?) << 32) | u64::from(u32_at(record, at + 4)?);
                (u32_at(record, at)?, value as i64)
            };
            let name = std::str::from_utf8(self.string(name)?).context("BTF string not UTF-8")?;
            out.push((name.to_string(), value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `int` and a struct with one member, `long_name` bytes of name for the struct.
    fn blob(long_name: usize) -> Vec<u8> {
        let mut strings = b"\0int\0".to_vec();
        let struct_name = strings.len() as u32;
        strings.extend(std::iter::repeat_n(b's', long_name));
        strings.push(0);
        let mut out = MAGIC.to_ne_bytes().to_vec();
        out.extend_from_slice(&[1, 0]);
        let types: Vec<u32> = vec![
            1,
            KIND_INT << 24,
            4,
            32,
            struct_name,
            KIND_STRUCT << 24 | 1,
            4,
            1,
            1,
            0,
        ];
        let len = (types.len() * 4) as u32;
        for word in [HEADER_LEN as u32, 0, len, len, strings.len() as u32] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend(types.iter().flat_map(|w| w.to_ne_bytes()));
        out.extend(strings);
        out
    }

    #[test]
    fn records_by_id_and_names_bounded() {
        let ok = blob(8);
        let types = Types::parse(&ok).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(types.count(), 2);
        assert_eq!(types.name(1).ok(), Some(&b"int"[..]));
        assert_eq!(types.name(2).ok(), Some(&b"ssssssss"[..]));
        assert_eq!(types.record(2).len(), 24);
        assert!(types.record(0).is_empty() && types.record(3).is_empty());
        assert_eq!(types.id_of(b"ssssssss", KIND_STRUCT), Some(2));
        assert!(types.enum_variants("ssssssss").is_err(), "not an enum");

        let long = blob(MAX_NAME_LEN);
        let types = Types::parse(&long).unwrap_or_else(|e| panic!("{e:#}"));
        let e = types.name(2).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("not terminated within 512")),
            "{e:?}"
        );
    }

    #[test]
    fn a_header_pointing_outside_the_blob_is_an_error() {
        let mut b = blob(1);
        b[8..12].copy_from_slice(&u32::MAX.to_ne_bytes()); // type_off
        let e = Types::parse(&b).err().map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("out of bounds")));
        assert!(Types::parse(&b[..10]).is_err());
    }
}
