//! `nodeconfig` / IRQBalance: irqbalance moves NIC interrupts around, fighting the queue and
//! IRQ pinning that network tuning sets up.

use anyhow::Result;

use super::{Check, CheckContext, Problem};

pub struct IrqBalance;

/// Pids of processes whose command name is `comm`.
pub fn processes_named(ctx: &CheckContext, comm: &str) -> Result<Vec<u32>> {
    let dir = std::fs::read_dir(&ctx.procfs)?;
    Ok(dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(ctx.procfs.join(format!("{pid}/comm")))
                .is_ok_and(|c| c.trim_end() == comm)
        })
        .collect())
}

impl Check for IrqBalance {
    fn name(&self) -> &'static str {
        "IRQBalance"
    }

    fn probe(&self) -> &'static str {
        "nodeconfig"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["IRQBalance"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let pids = processes_named(ctx, "irqbalance")?;
        Ok(if pids.is_empty() {
            Vec::new()
        } else {
            vec![Problem {
                kind: "IRQBalance",
                msg: "system irqbalance service is running, please stop it and use ksc-queue."
                    .into(),
                object: vec![("process.pid", pids[0].to_string())],
            }]
        })
    }
}
