//! `NetworkPolicy` (Kubernetes mode): NetworkPolicy objects exist, so Pod traffic may be
//! dropped by policy; worth knowing first when a Pod cannot reach another. Read from the
//! agent's watch of NetworkPolicies' metadata (`inventory::objects`).

use anyhow::Result;

use super::{Build, Check, CheckContext, Environment, Problem, needs_kubernetes};
use crate::component::NoOptions;

pub struct NetworkPolicyCheck;

impl Build for NetworkPolicyCheck {
    const NAME: &'static str = "NetworkPolicy";
    const PROBE: &'static str = "k8sconfig";
    const TYPES: &'static [&'static str] = &["NetworkPolicy"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for NetworkPolicyCheck {
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        needs_kubernetes(env)
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        Ok(if ctx.objects()?.network_policies()? == 0 {
            Vec::new()
        } else {
            vec![Problem {
                kind: "NetworkPolicy",
                msg: "network policy is configured,please use it carefully.".into(),
                object: Vec::new(),
            }]
        })
    }
}
