//! Puts the BPF objects into the build. Each program's C sits beside the Rust that loads it
//! (`src/**/NAME.bpf.c`, with its headers); `bpf/` holds what they share (`vmlinux.h`) and the
//! compiled objects, committed together with the SHA-256 of the sources they were built from
//! (`bpf/sources.sha256`), so that `cargo build` needs no clang. When the sources no longer
//! match the recorded hash, the objects are rebuilt here with clang if it is installed, and
//! the build fails with what to do if it is not. `make bpf` refreshes the committed objects;
//! `make bpf-check` (part of `make test`) proves they are what the sources compile to.
//!
//! The list of programs is the list of `*.bpf.c` files: adding a program is adding its file.
//! The hash covers every `*.bpf.c` and `*.h` under `src/` and `bpf/`, in byte order of their
//! paths (as `LC_ALL=C sort` orders them in the Makefile).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    let sources = bpf_sources();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut hasher = Sha256::new();
    for s in &sources {
        hasher.update(std::fs::read(s).unwrap_or_else(|e| panic!("{}: {e}", s.display())));
    }
    let hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let recorded = std::fs::read_to_string("bpf/sources.sha256").unwrap_or_default();
    let programs: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();

    if recorded.trim() == hash {
        for p in programs {
            let name = object_name(p);
            let from = format!("bpf/{name}");
            std::fs::copy(&from, out.join(&name)).unwrap_or_else(|e| panic!("{from}: {e}"));
        }
        return;
    }
    if Command::new("clang").arg("--version").output().is_err() {
        panic!(
            "BPF sources changed since the committed objects were built (bpf/sources.sha256), \
             and clang is not installed to rebuild them: install clang, llvm and libbpf-dev \
             and run `make bpf`"
        );
    }
    println!(
        "cargo:warning=bpf/ objects are stale; built from sources here. Run `make bpf` to commit fresh ones."
    );
    for p in programs {
        compile(p, &out.join(object_name(p)));
    }
}

/// `src/probes/packetloss/packetloss.bpf.c` -> `packetloss.bpf.o`.
fn object_name(program: &Path) -> String {
    let file = program
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{}.o", file.trim_end_matches(".c"))
}

/// Every `*.bpf.c` and `*.h` under `src/` and `bpf/`, sorted by path bytes.
fn bpf_sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("bpf"), PathBuf::from("src")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries.flatten() {
            let path = e.path();
            let name = path.to_string_lossy().into_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".bpf.c") || name.ends_with(".h") {
                out.push(path);
            }
        }
    }
    out.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    out
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
            "-Ibpf",
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
