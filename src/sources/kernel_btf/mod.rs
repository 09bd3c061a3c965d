//! The kernel's BTF for the BPF loaders: for each object only the types it can ask for.
//!
//! Parsed whole, the kernel's BTF (`/sys/kernel/btf/vmlinux`, 5-6 MB) holds ~23 MiB while it
//! lives (aya's 72-byte record for each of its ~126,000 types, the file, the strings): it was
//! the agent's start-up memory peak. Each object is given instead a BTF of the kernel's types
//! that it names and what they embed ([`lean`], a few hundred types), and its programs' attach
//! points by the kernel's ids, looked up in the file: aya never parses the whole of it (its
//! loader's own parse made lazy by the patch in `vendor/aya`, and attach points loaded by id).
//! Should the cut-down BTF not be made (an object that compares whole types, a kind of type
//! this code does not know), the object is loaded against the whole BTF and the agent says so:
//! more memory at start, nothing else lost.

mod lean;
mod raw;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use aya::programs::{BtfTracePoint, Iter, ProgramError};
use aya::{Btf, BtfError, Ebpf, EbpfLoader, Endianness};

pub struct KernelBtf {
    path: PathBuf,
    /// Whether a whole parse was already reported (said once, not per object).
    said_whole: AtomicBool,
}

/// The kernel's ids of an object's attach points (`btf_trace_X`, `bpf_iter_X`).
pub struct AttachPoints(HashMap<String, u32>);

impl AttachPoints {
    /// Loads a `tp_btf` program on the tracepoint `name`.
    pub fn tracepoint(&self, prog: &mut BtfTracePoint, name: &str) -> Result<(), ProgramError> {
        prog.load_by_btf_id(self.id(format!("btf_trace_{name}"))?)
    }

    /// Loads an `iter` program on the iterator `name`.
    pub fn iter(&self, prog: &mut Iter, name: &str) -> Result<(), ProgramError> {
        prog.load_by_btf_id(self.id(format!("bpf_iter_{name}"))?)
    }

    fn id(&self, type_name: String) -> Result<u32, ProgramError> {
        match self.0.get(&type_name) {
            Some(&id) => Ok(id),
            None => Err(BtfError::UnknownBtfTypeName { type_name }.into()),
        }
    }
}

impl KernelBtf {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            said_whole: AtomicBool::new(false),
        }
    }

    /// The kernel's BTF as `object` needs it (only the types it can ask for, or, when those
    /// cannot be told, all of it) and its attach points.
    fn for_object(&self, object: &[u8]) -> Result<(Btf, AttachPoints)> {
        let context = || format!("kernel BTF {}", self.path.display());
        let file = read(&self.path).with_context(context)?;
        let kernel = &file[..];
        let whole = match lean::for_object(kernel, object) {
            Ok(lean) => {
                drop(file);
                let btf = Btf::parse(&lean.btf, Endianness::default()).with_context(context)?;
                return Ok((btf, AttachPoints(lean.attach)));
            }
            Err(e) => e,
        };
        if !self.said_whole.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = format!("{whole:#}"),
                path = %self.path.display(),
                "BPF objects are loaded against the kernel's whole BTF (~23 MiB more at start)"
            );
        }
        let btf = Btf::parse(kernel, Endianness::default()).with_context(context)?;
        let attach = lean::attach_points(object)
            .into_iter()
            .filter_map(|(name, kind)| {
                let id = btf.id_by_type_name_kind(&name, kind).ok()?;
                Some((name, id))
            })
            .collect();
        Ok((btf, AttachPoints(attach)))
    }

    /// `object` loaded and relocated against the kernel's BTF, and its attach points.
    pub fn load(&self, object: &[u8]) -> Result<(Ebpf, AttachPoints)> {
        let (btf, attach) = self.for_object(object)?;
        let ebpf = EbpfLoader::new().btf(Some(&btf)).load(object)?;
        Ok((ebpf, attach))
    }

    /// `object` loaded and relocated against the kernel's BTF, for programs whose attach
    /// points need no BTF of their own (raw tracepoints, tracepoints).
    pub fn load_relocated(&self, object: &[u8]) -> Result<Ebpf> {
        Ok(self.load(object)?.0)
    }
}

/// The file in memory of its own, unmapped when dropped. On the heap, the 5.5 MB of the
/// kernel's BTF would raise glibc's threshold for mapping large blocks (its dynamic threshold
/// follows the largest block freed): later blocks up to that size then come from the heap,
/// and a thread's arena keeps its freed top, which `malloc_trim` does not return, so 5-6 MiB
/// stayed resident for good in about half the runs (measured with `/proc/PID/smaps`).
pub fn read(path: &Path) -> Result<memmap2::MmapMut> {
    let mut file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())?;
    anyhow::ensure!(len > 0, "empty");
    let mut memory = memmap2::MmapMut::map_anon(len)?;
    file.read_exact(&mut memory)?;
    Ok(memory)
}

/// The (name, value) pairs of the enum (ENUM or ENUM64) called `wanted` in raw BTF.
pub fn enum_variants(btf: &[u8], wanted: &str) -> Result<Vec<(String, i64)>> {
    raw::Types::parse(btf)?.enum_variants(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let btf = KernelBtf::new("/nonexistent/vmlinux".into());
        let e = btf
            .for_object(&[])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("kernel BTF /nonexistent/vmlinux"), "{e}");
        let e = btf
            .load(&[])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("kernel BTF /nonexistent/vmlinux"), "{e}");
    }

    /// Every object of the agent, as the probes load them.
    const OBJECTS: [(&str, &[u8]); 5] = [
        (
            "dns",
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns.bpf.o")),
        ),
        (
            "packetloss",
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/packetloss.bpf.o")),
        ),
        (
            "packetloss_nobtf",
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/packetloss_nobtf.bpf.o")),
        ),
        (
            "peers",
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/peers.bpf.o")),
        ),
        (
            "socksummary",
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socksummary.bpf.o")),
        ),
    ];

    /// The programs' instructions after relocation against `btf`.
    fn relocated(object: &[u8], btf: &Btf) -> Result<Vec<String>> {
        let mut obj = aya_obj::Object::parse(object)?;
        obj.relocate_btf(btf)?;
        Ok(obj
            .functions
            .values()
            .map(|f| format!("{}: {:?}", f.name, f.instructions))
            .collect())
    }

    /// This machine's kernel BTF: the truth the cut-down one is checked against.
    fn kernel() -> (Vec<u8>, Btf) {
        let path = "/sys/kernel/btf/vmlinux";
        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (a BTF kernel)"));
        let whole = Btf::parse(&raw, Endianness::default()).unwrap_or_else(|e| panic!("{e}"));
        (raw, whole)
    }

    #[test]
    fn every_object_relocates_against_its_cut_down_btf_exactly_as_against_the_whole() {
        let (raw, whole) = kernel();
        for (name, object) in OBJECTS {
            let lean = lean::for_object(&raw, object)
                .unwrap_or_else(|e| panic!("{name}: no cut-down BTF: {e:#}"));
            assert!(
                lean.btf.len() * 20 < raw.len(),
                "{name}: {} of {} bytes kept",
                lean.btf.len(),
                raw.len()
            );
            let lean = Btf::parse(&lean.btf, Endianness::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let expected = relocated(object, &whole).map_err(|e| format!("{e:#}"));
            let got = relocated(object, &lean).map_err(|e| format!("{e:#}"));
            assert!(
                expected.as_ref().is_ok_and(|f| !f.is_empty()),
                "{name}: {expected:?}"
            );
            assert!(expected == got, "{name}: relocated differently");
        }
    }

    #[test]
    fn attach_points_are_the_kernels_type_ids() {
        use aya_obj::btf::BtfKind;
        let (raw, whole) = kernel();
        let mut checked = 0;
        for (name, object) in OBJECTS {
            let lean = lean::for_object(&raw, object)
                .unwrap_or_else(|e| panic!("{name}: no cut-down BTF: {e:#}"));
            let attach = AttachPoints(lean.attach);
            for section in sections(object) {
                let (type_name, kind, id) = if let Some(point) = section.strip_prefix("tp_btf/") {
                    let id = attach.id(format!("btf_trace_{point}")).ok();
                    (format!("btf_trace_{point}"), BtfKind::Typedef, id)
                } else if let Some(point) = section.strip_prefix("iter/") {
                    let id = attach.id(format!("bpf_iter_{point}")).ok();
                    (format!("bpf_iter_{point}"), BtfKind::Func, id)
                } else {
                    continue;
                };
                let expected = whole.id_by_type_name_kind(&type_name, kind);
                assert!(expected.is_ok(), "{type_name} not in the kernel's BTF");
                assert_eq!(id, expected.ok(), "{name}: {type_name}");
                checked += 1;
            }
        }
        // tp_btf: packetloss 1, peers 5, socksummary 1; iter: peers 1, socksummary 2.
        assert_eq!(checked, 10);
        let none = AttachPoints(HashMap::new()).id("btf_trace_x".into());
        assert!(
            none.is_err_and(|e| format!("{e:#}").contains("btf_trace_x")),
            "an unknown attach point is named"
        );
    }

    fn sections(object: &[u8]) -> Vec<String> {
        use object::{Object, ObjectSection};
        let elf = object::File::parse(object).unwrap_or_else(|e| panic!("{e}"));
        elf.sections()
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect()
    }

    #[test]
    fn bad_kernel_btf_is_an_error_not_a_panic() {
        let object = OBJECTS[3].1;
        for (what, kernel) in [
            ("empty", Vec::new()),
            ("truncated", vec![0x9f, 0xeb, 1, 0, 24, 0]),
            ("garbage", vec![0xff; 64]),
        ] {
            let e = lean::for_object(&kernel, object)
                .err()
                .map(|e| format!("{e:#}"));
            assert!(
                e.as_deref().is_some_and(|e| e.contains("kernel BTF")),
                "{what}: {e:?}"
            );
        }
        let e = lean::for_object(&[], b"not an ELF")
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            e.as_deref().is_some_and(|e| e.contains("BPF object")),
            "{e:?}"
        );
    }
}
