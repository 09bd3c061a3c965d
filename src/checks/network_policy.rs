//! `NetworkPolicy` (Kubernetes mode): NetworkPolicy objects exist, so Pod traffic may be
//! dropped by policy; worth knowing first when a Pod cannot reach another.

use anyhow::{Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;

use super::{Build, Check, CheckContext, Environment, Problem, block_on, needs_kubernetes};
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
        let api: Api<NetworkPolicy> = Api::all(ctx.kube()?);
        let list =
            block_on(api.list(&ListParams::default().limit(1)))?.context("list NetworkPolicies")?;
        Ok(if list.items.is_empty() {
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
