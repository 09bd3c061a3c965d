//! `nodeconfig` / KernelLog: kernel log lines that signal network trouble (neighbour table
//! overflow, conntrack table full, TCP out of memory, SYN flooding, ...). The agent follows
//! `/dev/kmsg` as it is written (each matching line is an event, repeated lines held back by
//! noise control); `diagnose` scans what the log holds now.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use std::path::PathBuf;

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Check, CheckContext, Problem};

/// `KernelLog`.
pub struct KernelLog {
    options: KernelLogOptions,
}

/// `checks.KernelLog`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KernelLogOptions {
    /// The kernel log to follow.
    pub path: PathBuf,
    /// Lines that contain one of these (case-insensitive) are events.
    pub patterns: Vec<String>,
}

impl Default for KernelLogOptions {
    fn default() -> Self {
        Self {
            path: "/dev/kmsg".into(),
            patterns: default_patterns(),
        }
    }
}

impl Build for KernelLog {
    const NAME: &'static str = "KernelLog";
    const PROBE: &'static str = "nodeconfig";
    const TYPES: &'static [&'static str] = &["KernelLog"];
    type Options = KernelLogOptions;

    fn new(options: KernelLogOptions) -> Result<Self> {
        Ok(Self { options })
    }
}

impl Check for KernelLog {
    /// What the log holds now (`diagnose`).
    fn run(&self, _ctx: &CheckContext) -> Result<Vec<Problem>> {
        scan(&self.options.path, &self.options.patterns)
    }

    fn follows(&self) -> bool {
        true
    }

    /// The agent follows the log as it is written.
    fn follow(&self, found: &dyn Fn(Problem)) -> Result<()> {
        follow(&self.options.path, &self.options.patterns, found)
    }
}

/// The message of a `/dev/kmsg` record: `prio,seq,usec,flags;message` (continuation lines,
/// starting with a space, carry key=value metadata and are skipped).
pub fn record_message(record: &str) -> Option<&str> {
    let first = record.lines().next()?;
    let (_, msg) = first.split_once(';')?;
    Some(msg)
}

/// The pattern `line` matches, if any (case-insensitive substring).
pub fn matching<'a>(line: &str, patterns: &'a [String]) -> Option<&'a str> {
    let lower = line.to_ascii_lowercase();
    patterns
        .iter()
        .find(|p| lower.contains(&p.to_ascii_lowercase()))
        .map(String::as_str)
}

pub fn problem(line: &str, pattern: &str) -> Problem {
    Problem {
        kind: "KernelLog",
        msg: format!("['{}']", line.replace('\\', "\\\\").replace('\'', "\\'")),
        object: vec![("log.pattern", pattern.to_string())],
    }
}

fn open(path: &Path, nonblocking: bool) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if nonblocking {
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// Reads records until the log is drained (non-blocking) and returns the matching lines.
pub fn scan(path: &Path, patterns: &[String]) -> Result<Vec<Problem>> {
    let mut f = open(path, true)?;
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::new();
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some(msg) = record_message(&rec)
                    && let Some(p) = matching(msg, patterns)
                {
                    out.push(problem(msg, p));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while we read it: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e).context("read kernel log"),
        }
    }
    Ok(out)
}

/// Follows the log from now on, calling `found` for each matching line, until a read fails
/// for good. Blocks: run it on a thread of its own.
pub fn follow(path: &Path, patterns: &[String], mut found: impl FnMut(Problem)) -> Result<()> {
    let mut f = open(path, false)?;
    // Skip what is already there: those lines were written before the agent started.
    // SAFETY: lseek on a file descriptor we own.
    if unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_END) } < 0 {
        return Err(std::io::Error::last_os_error()).context("seek to the end of the kernel log");
    }
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some(msg) = record_message(&rec)
                    && let Some(p) = matching(msg, patterns)
                {
                    found(problem(msg, p));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read kernel log"),
        }
    }
}

/// Lines worth an event unless configured otherwise.
pub fn default_patterns() -> Vec<String> {
    [
        "neighbor table overflow",
        "nf_conntrack: table full",
        "nf_conntrack: expectation table full",
        "TCP: out of memory",
        "too many orphaned sockets",
        "Possible SYN flooding",
        "dropping packet",
        "link is not ready",
        "NETDEV WATCHDOG",
        "page allocation failure",
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_matches() {
        let rec = "4,1234,5678,-;neighbour: arp_cache: neighbor table overflow!\n SUBSYSTEM=net\n";
        let msg = record_message(rec).unwrap();
        assert_eq!(msg, "neighbour: arp_cache: neighbor table overflow!");
        let pats = default_patterns();
        let p = problem(msg, matching(msg, &pats).unwrap());
        assert_eq!(p.msg, "['neighbour: arp_cache: neighbor table overflow!']");
        assert!(matching("eth0: link up", &pats).is_none());
        assert_eq!(record_message("garbage"), None);
        assert_eq!(problem("it's", "x").msg, r"['it\'s']");
    }
}
