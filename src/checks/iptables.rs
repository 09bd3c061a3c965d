//! `nodeconfig` / IPtablesAbnormal: the iptables FORWARD chain's default policy is DROP, so
//! that forwarded traffic (Pod to Pod across nodes, NodePorts to remote Pods) is dropped unless
//! some rule accepts it.
//!
//! Read from `iptables -w 5 -S FORWARD` (`checks.iptables_command`) in the agent's namespace. A
//! missing binary, a timeout or a failing command is the check's error, not a problem.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Check, CheckContext, Problem};

pub struct IptablesAbnormal {
    options: IptablesOptions,
}

/// `checks.IPtablesAbnormal`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IptablesOptions {
    /// The iptables command to run (`iptables-legacy` where the node's rules are in the
    /// legacy backend and the agent's `iptables` is the nft one).
    pub command: String,
}

impl Default for IptablesOptions {
    fn default() -> Self {
        Self {
            command: "iptables".into(),
        }
    }
}

/// How long the command may take (it waits up to 5 s for the xtables lock itself).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd args`, returning its stdout; an error if it cannot start, fails or is still
/// running after `timeout` (then it is killed).
pub fn command_output(cmd: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let line = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {line}"))?;
    // Read both pipes on threads so a full pipe never blocks the command.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stdout.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = stderr.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .with_context(|| format!("wait for {line}"))?
        {
            break s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{line}: still running after {timeout:?}, killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out
        .join()
        .map_err(|_| anyhow!("{line}: stdout reader panicked"))?;
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!("{line}: {status}: {}", stderr.trim());
    }
    Ok(stdout)
}

/// The chain's policy from `iptables -S <chain>` output (`-P FORWARD DROP` → `DROP`).
pub fn policy<'a>(rules: &'a str, chain: &str) -> Option<&'a str> {
    rules.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("-P") && f.next() == Some(chain))
            .then(|| f.next())
            .flatten()
    })
}

impl Build for IptablesAbnormal {
    const NAME: &'static str = "IPtablesAbnormal";
    const PROBE: &'static str = "nodeconfig";
    const TYPES: &'static [&'static str] = &["IPtablesAbnormal"];
    type Options = IptablesOptions;

    fn new(options: IptablesOptions) -> Result<Self> {
        if options.command.trim().is_empty() {
            bail!("command: empty");
        }
        Ok(Self { options })
    }
}

impl Check for IptablesAbnormal {
    fn run(&self, _ctx: &CheckContext) -> Result<Vec<Problem>> {
        let cmd = &self.options.command;
        let rules = command_output(cmd, &["-w", "5", "-S", "FORWARD"], TIMEOUT)?;
        let policy = policy(&rules, "FORWARD")
            .ok_or_else(|| anyhow!("{cmd} -S FORWARD printed no policy line: {rules:?}"))?;
        Ok(if policy == "DROP" {
            vec![Problem {
                kind: "IPtablesAbnormal",
                msg: "FORWARD drop default.".into(),
                object: vec![
                    ("iptables.chain", "FORWARD".into()),
                    ("iptables.policy", policy.into()),
                ],
            }]
        } else {
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_policy() {
        let out = "-P FORWARD DROP\n-A FORWARD -j KUBE-FORWARD\n";
        assert_eq!(policy(out, "FORWARD"), Some("DROP"));
        assert_eq!(policy("-P FORWARD ACCEPT\n", "FORWARD"), Some("ACCEPT"));
        assert_eq!(policy("-P INPUT DROP\n", "FORWARD"), None);
        assert_eq!(policy("", "FORWARD"), None);
    }

    #[test]
    fn command_errors_are_errors() {
        let e = command_output("/nonexistent/iptables", &["-S"], TIMEOUT).unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent/iptables -S"),
            "{e:#}"
        );
        let e = command_output("sh", &["-c", "echo nope >&2; exit 3"], TIMEOUT).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        let e = command_output("sleep", &["5"], Duration::from_millis(200)).unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
        assert_eq!(
            command_output("echo", &["hi"], TIMEOUT).unwrap(),
            "hi\n".to_string()
        );
    }
}
