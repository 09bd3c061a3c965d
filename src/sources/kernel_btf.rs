//! The kernel's BTF for the BPF loaders, parsed so that no two parses are alive at once.
//!
//! A parse of the kernel's BTF (`/sys/kernel/btf/vmlinux`, 5-6 MB) holds ~23 MiB while it lives
//! (aya's type tables and the file), and a load needs two: aya's loader parses the kernel BTF
//! itself when it is created (`EbpfLoader::new`) to relocate the object, and the programs need
//! a parsed BTF of their own to find their attach points (`BtfTracePoint::load`, `Iter::load`).
//! Made one after the other, the first dropped before the second is made, the start-up peak
//! holds one parse, not two; the collection that loaded them then hands the freed heap back to
//! the kernel (`collector::release_freed_memory`). (aya 0.14 offers no loader that skips its own
//! parse, nor access to it.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

/// Where aya's loader reads the kernel's BTF from, whatever is configured.
const AYA_DEFAULT: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    path: PathBuf,
}

impl KernelBtf {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The kernel's BTF, parsed now (dropped by the caller when its programs are loaded).
    pub fn parse(&self) -> Result<Btf> {
        Btf::parse_file(&self.path, Endianness::default())
            .with_context(|| format!("kernel BTF {}", self.path.display()))
    }

    /// `object` loaded and relocated against the kernel's BTF, and the BTF parsed again for its
    /// programs' attach points, once the loader's own parse is gone.
    pub fn load(&self, object: &[u8]) -> Result<(Ebpf, Btf)> {
        let ebpf = self.load_relocated(object)?;
        Ok((ebpf, self.parse()?))
    }

    /// `object` loaded and relocated against the kernel's BTF, for programs whose attach
    /// points need no BTF of their own (raw tracepoints, tracepoints).
    pub fn load_relocated(&self, object: &[u8]) -> Result<Ebpf> {
        // Missing, it is said as such (aya's loader would only fail to relocate).
        std::fs::metadata(&self.path)
            .with_context(|| format!("kernel BTF {}", self.path.display()))?;
        let mut loader = EbpfLoader::new();
        if self.path == Path::new(AYA_DEFAULT) {
            return Ok(loader.load(object)?);
        }
        // Another file is configured: the loader's parse (of the default path, if any) goes
        // before ours is made.
        loader.btf(None);
        let btf = self.parse()?;
        Ok(loader.btf(Some(&btf)).load(object)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let btf = KernelBtf::new("/nonexistent/vmlinux".into());
        let e = btf
            .parse()
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
}
