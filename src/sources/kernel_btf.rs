//! The kernel's BTF, parsed once for every BPF program the agent loads, and let go as soon as
//! they are loaded.
//!
//! Every loader (the drop counter, the peer counter, the socket storage) relocates its object
//! against the kernel's BTF, and a parse of `/sys/kernel/btf/vmlinux` (5-6 MB) holds tens of MiB
//! of type tables while it lives. Parsed by each loader in turn, the start-up peak was ~36 MiB
//! above the steady state (`docs/operations.md`, Memory); parsed once and dropped after the
//! collection that loaded the programs (whose end hands the freed heap back to the kernel), the
//! peak is one parse and the steady state keeps none of it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use aya::{Btf, Endianness};

pub struct KernelBtf {
    path: PathBuf,
    parsed: Mutex<Option<Arc<Btf>>>,
}

impl KernelBtf {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            parsed: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed BTF: parsed at the first ask, then shared until [`Self::release`]. A failed
    /// parse is not kept: the next ask tries again (the file may appear, e.g. a module loaded).
    pub fn get(&self) -> Result<Arc<Btf>> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(btf) = parsed.as_ref() {
            return Ok(Arc::clone(btf));
        }
        let btf = Arc::new(
            Btf::parse_file(&self.path, Endianness::default())
                .with_context(|| format!("kernel BTF {}", self.path.display()))?,
        );
        *parsed = Some(Arc::clone(&btf));
        Ok(btf)
    }

    /// Lets the parsed BTF go: the loaders are done with it. (The collection then hands the
    /// freed heap back to the kernel: `collector::release_freed_memory`.)
    pub fn release(&self) {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_an_error_naming_it_and_nothing_is_kept() {
        let btf = KernelBtf::new("/nonexistent/vmlinux".into());
        let e = btf
            .get()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("kernel BTF /nonexistent/vmlinux"), "{e}");
        assert!(btf.parsed.lock().map(|p| p.is_none()).unwrap_or(false));
        btf.release();
    }

    #[test]
    fn parsed_once_shared_until_released() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return; // a kernel without BTF: the error path is tested above
        }
        let btf = KernelBtf::new(path.into());
        let (a, b) = (btf.get(), btf.get());
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("kernel BTF did not parse")
        };
        assert!(Arc::ptr_eq(&a, &b));
        btf.release();
        assert!(btf.parsed.lock().map(|p| p.is_none()).unwrap_or(false));
        let c = btf.get().ok();
        assert!(c.is_some_and(|c| !Arc::ptr_eq(&a, &c)));
    }
}
