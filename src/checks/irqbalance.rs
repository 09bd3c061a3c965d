//! `nodeconfig` / IRQBalance: irqbalance moves NIC interrupts around, fighting the queue and
//! IRQ pinning that network tuning sets up.

use anyhow::Result;

use super::{Build, Check, CheckContext, Problem, processes_named};
use crate::component::NoOptions;

pub struct IrqBalance;

impl Build for IrqBalance {
    const NAME: &'static str = "IRQBalance";
    const PROBE: &'static str = "nodeconfig";
    const TYPES: &'static [&'static str] = &["IRQBalance"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for IrqBalance {
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let pids = processes_named(&ctx.procfs, "irqbalance")?;
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
