//! The kernel's BTF for the BPF loaders: for each object only the types it can ask for.
//!
//! Parsed whole, the kernel's BTF (`/sys/kernel/btf/vmlinux`, 5-6 MB) holds ~23 MiB while it
//! lives (aya's type tables and the file): it was the agent's start-up memory peak. Each object
//! is given instead a BTF of the kernel's types that it names, with their ids ([`lean`]), made
//! from the file and dropped with it before aya parses the result; one parse serves both the
//! relocation and the programs' attach points (`BtfTracePoint::load`, `Iter::load`). aya's
//! loader no longer parses the whole file of its own accord (the patch in `vendor/aya`).
//! Should the cut-down BTF not be made (an object that compares whole types, a kind of type
//! this code does not know), the object is loaded against the whole BTF and the agent says so:
//! more memory at start, nothing else lost.

mod lean;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

pub struct KernelBtf {
    path: PathBuf,
    /// Whether a whole parse was already reported (said once, not per object).
    said_whole: AtomicBool,
}

impl KernelBtf {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            said_whole: AtomicBool::new(false),
        }
    }

    /// The kernel's BTF as `object` needs it: only the types it can ask for, or, when those
    /// cannot be told, all of it.
    pub fn for_object(&self, object: &[u8]) -> Result<Btf> {
        let context = || format!("kernel BTF {}", self.path.display());
        let kernel = std::fs::read(&self.path).with_context(context)?;
        let whole = match lean::for_object(&kernel, object) {
            Ok(lean) => {
                drop(kernel);
                return Btf::parse(&lean, Endianness::default()).with_context(context);
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
        Btf::parse(&kernel, Endianness::default()).with_context(context)
    }

    /// `object` loaded and relocated against the kernel's BTF, and that BTF, for its programs'
    /// attach points.
    pub fn load(&self, object: &[u8]) -> Result<(Ebpf, Btf)> {
        let btf = self.for_object(object)?;
        let ebpf = EbpfLoader::new().btf(Some(&btf)).load(object)?;
        Ok((ebpf, btf))
    }

    /// `object` loaded and relocated against the kernel's BTF, for programs whose attach
    /// points need no BTF of their own (raw tracepoints, tracepoints).
    pub fn load_relocated(&self, object: &[u8]) -> Result<Ebpf> {
        Ok(self.load(object)?.0)
    }
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
                lean.len() * 3 < raw.len(),
                "{name}: {} of {} bytes kept",
                lean.len(),
                raw.len()
            );
            let lean =
                Btf::parse(&lean, Endianness::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
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
    fn attach_points_keep_the_kernels_type_ids() {
        use aya_obj::btf::BtfKind;
        let (raw, whole) = kernel();
        let mut checked = 0;
        for (name, object) in OBJECTS {
            let lean = Btf::parse(
                &lean::for_object(&raw, object).unwrap_or_default(),
                Endianness::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            for (prefix, kernel, kind) in [
                ("tp_btf/", "btf_trace_", BtfKind::Typedef),
                ("iter/", "bpf_iter_", BtfKind::Func),
            ] {
                for section in sections(object) {
                    let Some(point) = section.strip_prefix(prefix) else {
                        continue;
                    };
                    let type_name = format!("{kernel}{point}");
                    let id = whole.id_by_type_name_kind(&type_name, kind);
                    assert!(id.is_ok(), "{type_name} not in the kernel's BTF");
                    assert_eq!(
                        lean.id_by_type_name_kind(&type_name, kind).ok(),
                        id.ok(),
                        "{name}: {type_name}"
                    );
                    checked += 1;
                }
            }
        }
        // tp_btf: packetloss 1, peers 5, socksummary 1; iter: peers 1, socksummary 2.
        assert_eq!(checked, 10);
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
