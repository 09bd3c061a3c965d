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

/// Reads records until the log is drained (non-blocking) and returns the matching lines. Where
/// the log cannot be opened for want of permission, the kernel's ring buffer is read through
/// syslog(2) instead (see [`follow`]).
pub fn scan(path: &Path, patterns: &[String]) -> Result<Vec<Problem>> {
    let mut f = match open(path, true) {
        Ok(f) => f,
        Err(e) if denied(&e) => {
            let lines = syslog::read_all().context("read the kernel log through syslog(2)")?;
            return Ok(lines
                .iter()
                .filter_map(|l| {
                    let msg = syslog::message(l);
                    matching(msg, patterns).map(|p| problem(msg, p))
                })
                .collect());
        }
        Err(e) => return Err(e),
    };
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

/// Whether opening the log failed for want of permission: in a container the device cgroup
/// refuses `/dev/kmsg` (char device 1:11) to all but privileged containers, whatever the
/// capabilities.
fn denied(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Follows the log from now on, calling `found` for each matching line, until a read fails
/// for good. Blocks: run it on a thread of its own. Where `path` cannot be opened for want of
/// permission (a container's device cgroup), the kernel's ring buffer is polled through
/// syslog(2) instead, which needs CAP_SYSLOG and no device.
pub fn follow(path: &Path, patterns: &[String], mut found: impl FnMut(Problem)) -> Result<()> {
    let mut f = match open(path, false) {
        Ok(f) => f,
        Err(e) if denied(&e) => {
            tracing::info!(path = %path.display(), error = %format!("{e:#}"), "kernel log not readable as a file; following it through syslog(2)");
            return syslog::follow(patterns, found);
        }
        Err(e) => return Err(e),
    };
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

/// The kernel log through syslog(2) (`klogctl`): the whole ring buffer as text, read without
/// consuming it. Hand-written: it is one libc call; the crates that read the kernel log add an
/// async runtime or parse /dev/kmsg only.
mod syslog {
    use std::time::Duration;

    use anyhow::Result;

    use super::{Problem, matching, problem};

    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    const SYSLOG_ACTION_SIZE_BUFFER: libc::c_int = 10;
    /// How often the ring buffer is read while following.
    const POLL: Duration = Duration::from_secs(1);

    /// The ring buffer's lines, oldest first (`<prio>[seconds] message` each).
    pub fn read_all() -> Result<Vec<String>> {
        // SAFETY: SIZE_BUFFER takes no buffer.
        let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0).max(4096)];
        let len = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the kernel writes at most `len` bytes into `buf`.
        let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr().cast(), len) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        Ok(String::from_utf8_lossy(&buf)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// The message of a line: without its `<prio>` and its `[seconds] ` timestamp.
    pub fn message(line: &str) -> &str {
        let rest = match line.strip_prefix('<').and_then(|r| r.split_once('>')) {
            Some((_, r)) => r,
            None => line,
        };
        match rest.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((_, m)) => m,
            None => rest,
        }
    }

    /// The lines of `now` written after `last` (the last line seen; `None`: the log was
    /// empty). When `last` is no longer there, the ring buffer wrapped past it: every line in
    /// it is newer.
    pub fn after<'a>(now: &'a [String], last: Option<&str>) -> &'a [String] {
        match last.and_then(|l| now.iter().rposition(|x| x == l)) {
            Some(i) => &now[i + 1..],
            None => now,
        }
    }

    /// Polls the ring buffer, calling `found` for each matching line written since the last
    /// read; the lines there when it starts were written before the agent started.
    pub fn follow(patterns: &[String], mut found: impl FnMut(Problem)) -> Result<()> {
        let first = read_all()?;
        let mut last = first.last().cloned();
        loop {
            std::thread::sleep(POLL);
            let now = read_all()?;
            for line in after(&now, last.as_deref()) {
                let msg = message(line);
                if let Some(p) = matching(msg, patterns) {
                    found(problem(msg, p));
                }
            }
            if let Some(l) = now.last() {
                last = Some(l.clone());
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_after_the_last_seen() {
            let v = |s: &[&str]| -> Vec<String> { s.iter().map(|x| x.to_string()).collect() };
            let now = v(&["<6>[1.0] a", "<6>[2.0] b", "<4>[3.0] c"]);
            assert_eq!(after(&now, Some("<6>[2.0] b")), &now[2..]);
            assert!(after(&now, Some("<4>[3.0] c")).is_empty());
            // Wrapped past the last line seen: all is new.
            assert_eq!(after(&now, Some("<6>[0.5] z")), &now[..]);
            // The log was empty: all is new.
            assert_eq!(after(&now, None), &now[..]);
            assert_eq!(
                message("<4>[ 3123.456789] nf_conntrack: table full, dropping packet"),
                "nf_conntrack: table full, dropping packet"
            );
            assert_eq!(message("<4>no timestamp"), "no timestamp");
            assert_eq!(message("plain"), "plain");
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
