//! Kernel parameters (sysctls) under the configured procfs (the host's, at `/host/proc` in a
//! container; a fixture tree in tests). Hand-written, being a path join and a read: the
//! `sysctl` crate reads `/proc/sys` only, and turns every `.` of a dotted name into `/`,
//! which breaks on interface names that hold dots (`eth0.100`, a VLAN uplink). Names are
//! therefore given as their components.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

/// `<procfs>/sys/net/ipv4/conf/eth0.100/rp_filter` for `["net", "ipv4", "conf", "eth0.100",
/// "rp_filter"]`.
pub fn path(procfs: &Path, name: &[&str]) -> PathBuf {
    let mut p = procfs.join("sys");
    for c in name {
        p.push(c);
    }
    p
}

/// The value, trimmed.
pub fn read(procfs: &Path, name: &[&str]) -> Result<String> {
    let p = path(procfs, name);
    std::fs::read_to_string(&p)
        .map(|v| v.trim().to_string())
        .map_err(|e| anyhow!("read {}: {e}", p.display()))
}

/// The name as `sysctl` prints it: `net.ipv4.conf.eth0.100.rp_filter`.
pub fn dotted(name: &[&str]) -> String {
    name.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_are_read_from_their_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sys/net/ipv4/conf/eth0.100");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("rp_filter"), "2\n").unwrap();
        let name = ["net", "ipv4", "conf", "eth0.100", "rp_filter"];
        assert_eq!(read(dir.path(), &name).unwrap(), "2");
        assert_eq!(dotted(&name), "net.ipv4.conf.eth0.100.rp_filter");
        assert!(
            read(
                dir.path(),
                &["net", "ipv4", "conf", "eth0", "100", "rp_filter"]
            )
            .is_err()
        );
    }
}
