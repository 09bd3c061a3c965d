//! Puts the BPF objects into the build. The objects are committed under `bpf/` together with
//! the SHA-256 of the sources they were built from (`bpf/sources.sha256`), so that
//! `cargo build` needs no clang. When the sources no longer match the recorded hash, the
//! objects are rebuilt here with clang if it is installed, and the build fails with what to
//! do if it is not. `make bpf` refreshes the committed objects; `make bpf-check` (part of
//! `make test`) proves they are what the sources compile to.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const OBJECTS: [&str; 3] = ["packetloss", "packetloss_nobtf", "socksummary"];
/// In the order `make bpf` hashes them.
const SOURCES: [&str; 6] = [
    "bpf/packetloss.bpf.c",
    "bpf/packetloss_nobtf.bpf.c",
    "bpf/packetloss.h",
    "bpf/vmlinux.h",
    "bpf/socksummary.bpf.c",
    "bpf/socksummary.h",
];

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut hasher = Sha256::new();
    for s in SOURCES {
        hasher.update(std::fs::read(s).unwrap_or_else(|e| panic!("{s}: {e}")));
    }
    let hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let recorded = std::fs::read_to_string("bpf/sources.sha256").unwrap_or_default();

    if recorded.trim() == hash {
        for o in OBJECTS {
            let from = format!("bpf/{o}.bpf.o");
            std::fs::copy(&from, out.join(format!("{o}.bpf.o")))
                .unwrap_or_else(|e| panic!("{from}: {e}"));
        }
        return;
    }
    if Command::new("clang").arg("--version").output().is_err() {
        panic!(
            "bpf/ sources changed since the committed objects were built (bpf/sources.sha256), \
             and clang is not installed to rebuild them: install clang, llvm and libbpf-dev \
             and run `make bpf`"
        );
    }
    println!(
        "cargo:warning=bpf/ objects are stale; built from sources here. Run `make bpf` to commit fresh ones."
    );
    for o in OBJECTS {
        compile(
            Path::new(&format!("bpf/{o}.bpf.c")),
            &out.join(format!("{o}.bpf.o")),
        );
    }
}

fn compile(src: &Path, obj: &Path) {
    let arch_include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    // As in the Makefile: no checkout path in the object.
    let here = std::env::current_dir().expect("current dir");
    let prefix_map = format!("-fdebug-prefix-map={}=.", here.display());
    let status = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            &arch_include,
            &prefix_map,
            "-c",
        ])
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
        .expect("run clang");
    assert!(status.success(), "clang failed on {}", src.display());
    let status = Command::new("llvm-strip")
        .arg("-g")
        .arg(obj)
        .status()
        .expect("run llvm-strip");
    assert!(status.success(), "llvm-strip failed on {}", obj.display());
}
