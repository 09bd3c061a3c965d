//! `SVCTrafficPolicy` (Kubernetes mode): Services with `externalTrafficPolicy` or
//! `internalTrafficPolicy: Local`, whose traffic to nodes without a local endpoint is dropped.
//! Read from the agent's watch of Services (`inventory::objects`).

use anyhow::Result;

use super::{Build, Check, CheckContext, Environment, Problem, capped_list, needs_kubernetes};
use crate::component::NoOptions;

pub struct TrafficPolicyCheck;

/// `externalTrafficPolicy of svc(a/ns,...) is Local, internalTrafficPolicy of svc (b/ns,...) is
/// Local, please check it.` — each half only when some Service has it.
pub fn traffic_policy_msg(external: &[String], internal: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if !external.is_empty() {
        parts.push(format!(
            "externalTrafficPolicy of svc({}) is Local",
            capped_list(external)
        ));
    }
    if !internal.is_empty() {
        parts.push(format!(
            "internalTrafficPolicy of svc ({}) is Local",
            capped_list(internal)
        ));
    }
    (!parts.is_empty()).then(|| format!("{}, please check it.", parts.join(", ")))
}

impl Build for TrafficPolicyCheck {
    const NAME: &'static str = "SVCTrafficPolicy";
    const PROBE: &'static str = "k8sconfig";
    const TYPES: &'static [&'static str] = &["LocalTrafficPolicy"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for TrafficPolicyCheck {
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        needs_kubernetes(env)
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let (mut external, mut internal) = (Vec::new(), Vec::new());
        for s in ctx.objects()?.services()? {
            let name = format!(
                "{}/{}",
                s.metadata.name.as_deref().unwrap_or(""),
                s.metadata.namespace.as_deref().unwrap_or("")
            );
            let spec = s.spec.as_ref();
            if spec.and_then(|sp| sp.external_traffic_policy.as_deref()) == Some("Local") {
                external.push(name.clone());
            }
            if spec.and_then(|sp| sp.internal_traffic_policy.as_deref()) == Some("Local") {
                internal.push(name);
            }
        }
        external.sort();
        internal.sort();
        Ok(traffic_policy_msg(&external, &internal)
            .map(|msg| Problem {
                kind: "LocalTrafficPolicy",
                msg,
                object: Vec::new(),
            })
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keeps_the_spec_shape() {
        let names: Vec<String> = ["a/x", "b/x", "c/x", "d/x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            traffic_policy_msg(&names[..1], &names[..1]).unwrap(),
            "externalTrafficPolicy of svc(a/x) is Local, internalTrafficPolicy of svc (a/x) is Local, please check it."
        );
        assert_eq!(
            traffic_policy_msg(&names, &[]).unwrap(),
            "externalTrafficPolicy of svc(a/x,b/x,c/x,...) is Local, please check it."
        );
        assert_eq!(traffic_policy_msg(&[], &[]), None);
    }
}
