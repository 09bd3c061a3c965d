//! The agent's own BPF programs as the kernel accounts them: how often each ran and for how
//! long (the kernel's program statistics, counted only while `kernel.bpf_stats_enabled` is 1;
//! turning them on costs every BPF program on the node two clock reads per run, so it is left
//! to the operator). The same numbers `bpftool prog show` prints as `run_cnt` / `run_time_ns`,
//! and its `recursion_misses`: runs the kernel skipped, always counted (since 5.12), because the
//! program was already running on that CPU (a softirq interrupting it in process context). A
//! skipped run is an event the program never saw: counted here, it is not lost silently.
//!
//! Read from `/proc/self/fdinfo`: each BPF program file descriptor the agent holds says the
//! program's id and statistics; the name comes from the kernel's program list (which keeps 15
//! characters of it: the agent's programs are named within that). Hand-written:
//! fdinfo is a few `key:\tvalue` lines, and aya lists programs but not which are this
//! process's.

use std::collections::BTreeMap;
use std::path::Path;

/// One of the agent's BPF maps that can fill up, as its last read found it. A full map does not
/// stop its program: the events it cannot count are counted apart (`uncounted`), so a full map
/// shows, never silently loses data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfMapFill {
    pub map: &'static str,
    pub entries: u64,
    /// Its capacity as the kernel created it (`max_entries`).
    pub max_entries: u64,
    /// Events not counted, since the map was created, because it was full.
    pub uncounted: u64,
}

impl BpfMapFill {
    /// `map`'s fill: `entries` as just read, its capacity asked of the kernel.
    pub fn of(
        map: &aya::maps::MapData,
        name: &'static str,
        entries: usize,
        uncounted: u64,
    ) -> Self {
        Self {
            map: name,
            entries: entries as u64,
            max_entries: map.info().map_or(0, |i| u64::from(i.max_entries())),
            uncounted,
        }
    }
}

/// One program the agent has loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfProgram {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    /// `None` on kernels that do not count them (before 5.12).
    pub recursion_misses: Option<u64>,
}

/// The programs behind this process's file descriptors, by id. `names` keeps each program's
/// name across calls: the kernel's program list, where names come from, holds every program of
/// the node (hundreds on some), so it is walked only when a program of the agent's is new.
pub fn ours(names: &mut BTreeMap<u32, String>) -> Vec<BpfProgram> {
    let mut by_id: BTreeMap<u32, BpfProgram> = BTreeMap::new();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    for fd in fds.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == b"anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = Path::new("/proc/self/fdinfo").join(fd.file_name());
        if let Some(p) = std::fs::read_to_string(info).ok().and_then(|t| parse(&t)) {
            by_id.insert(p.id, p);
        }
    }
    names.retain(|id, _| by_id.contains_key(id));
    if by_id.keys().any(|id| !names.contains_key(id)) {
        for info in aya::programs::loaded_programs().flatten() {
            if by_id.contains_key(&info.id())
                && let Some(name) = info.name_as_str()
            {
                names.insert(info.id(), name.to_string());
            }
        }
    }
    by_id
        .into_values()
        .map(|mut p| {
            if let Some(name) = names.get(&p.id) {
                p.name = name.clone();
            }
            p
        })
        .collect()
}

/// A BPF program's fdinfo; `None` if it lacks the id or statistics (kernels before 5.1).
fn parse(fdinfo: &str) -> Option<BpfProgram> {
    let field = |key: &str| {
        fdinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    let id = u32::try_from(field("prog_id")?).ok()?;
    Some(BpfProgram {
        id,
        name: format!("id-{id}"),
        runs: field("run_cnt")?,
        run_time_ns: field("run_time_ns")?,
        recursion_misses: field("recursion_misses"),
    })
}

/// Each program of `ebpf` by name, with its run time and runs from the kernel's statistics
/// (counted only while `kernel.bpf_stats_enabled` is 1).
pub fn program_stats(ebpf: &aya::Ebpf) -> Vec<(String, std::time::Duration, u64)> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            let i = p.info().ok()?;
            Some((name.to_string(), i.run_time(), i.run_count()))
        })
        .collect()
}

/// `kernel.bpf_stats_enabled`: whether the kernel counts program runs and run time now.
pub fn stats_enabled() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .ok()
        .map(|s| s.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_programs_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t26\n\
                      prog_jited:\t1\nprog_tag:\t0b3f3c6e1b1a3c2d\nmemlock:\t4096\nprog_id:\t412\n\
                      run_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t3\nverified_insns:\t330\n";
        assert_eq!(
            parse(fdinfo),
            Some(BpfProgram {
                id: 412,
                name: "id-412".into(),
                runs: 789,
                run_time_ns: 123456,
                recursion_misses: Some(3),
            })
        );
        assert_eq!(parse("pos:\t0\nprog_id:\t5\n"), None, "no statistics");
        let before_5_12 = parse("prog_id:\t5\nrun_time_ns:\t1\nrun_cnt:\t2\n");
        assert_eq!(before_5_12.map(|p| p.recursion_misses), Some(None));
        assert_eq!(parse("prog_id:\tx\nrun_cnt:\t1\nrun_time_ns:\t1\n"), None);
    }
}
