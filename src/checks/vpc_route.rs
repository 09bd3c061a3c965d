//! `VpcRoute` (pluggable, provider-specific): whether the cloud network routes the node's Pod
//! CIDR to the node. The check is built on [`VpcRouteProvider`]; without a provider (the
//! default: none is built in) it is unavailable.

use anyhow::Result;

use super::{Build, Check, CheckContext, Environment, Problem};
use crate::component::NoOptions;

/// What a cloud's route table says about one of the node's Pod CIDRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpcRouteState {
    /// Routed to this node: fine.
    Exists,
    /// No route for the CIDR.
    Missing,
    /// The route could not be created: another route holds the CIDR.
    Conflict,
}

/// The provider-specific half of `VpcRoute`. A cloud provider plugs in by implementing this
/// trait (asking its VPC route-table API, with the node's Pod CIDRs from `ctx.cluster`'s
/// `node_cidrs`) and returning it from [`provider`]. Errors (API unreachable, no credentials)
/// are the check's errors, never problems.
pub trait VpcRouteProvider: Sync + Send {
    /// The state of each of the node's Pod CIDRs in the cloud network; empty when there is
    /// nothing to check here.
    fn routes(&self, ctx: &CheckContext) -> Result<Vec<(ipnet::IpNet, VpcRouteState)>>;
}

/// The provider of this build: none is built in. A provider's crate feature would return it
/// here.
pub fn provider() -> Option<Box<dyn VpcRouteProvider>> {
    None
}

/// `VpcRoute`: the node's Pod CIDR not routed to it by the cloud network.
pub struct VpcRoute {
    provider: Option<Box<dyn VpcRouteProvider>>,
}

impl Build for VpcRoute {
    const NAME: &'static str = "VpcRoute";
    const PROBE: &'static str = "route";
    const TYPES: &'static [&'static str] = &["VpcRoute"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self {
            provider: provider(),
        })
    }
}

impl Check for VpcRoute {
    fn prerequisites(&self, _: &Environment) -> Result<(), String> {
        match self.provider {
            Some(_) => Ok(()),
            None => Err("no VPC route provider for this cloud in this build".into()),
        }
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let Some(provider) = &self.provider else {
            return Ok(Vec::new());
        };
        Ok(provider
            .routes(ctx)?
            .into_iter()
            .filter_map(|(cidr, state)| {
                let msg = match state {
                    VpcRouteState::Exists => return None,
                    VpcRouteState::Missing => "vpc route does not exist for this node.",
                    VpcRouteState::Conflict => "vpc route creates failed because of conflict.",
                };
                Some(Problem {
                    kind: "VpcRoute",
                    msg: msg.into(),
                    object: vec![("k8s.node.pod_cidr", cidr.to_string())],
                })
            })
            .collect())
    }
}
