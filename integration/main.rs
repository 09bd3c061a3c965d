//! Integration tests: the real binary against real network namespaces, veth pairs and
//! servers on this machine. Every resource a test creates is removed by a guard.

mod api_load;
mod checks;
mod churn;
mod cli;
mod degraded;
mod dns;
mod events_export;
mod fake_apiserver;
mod harness;
mod image;
mod k8s_checks;
mod kubernetes;
mod monotonic;
mod otlp;
mod otlp_receiver;
mod outage;
mod packetloss;
mod peers;
mod pods;
mod privilege;
mod probes;
mod prometheus;
mod self_cost;
mod sockets;
mod surfaces;
mod traces;
mod udp;
mod web;

use harness::*;

#[test]
fn smoke_named_namespace_appears_and_disappears() {
    require_root();
    let agent = Agent::start(&[]);
    let ns = Netns::new("nxs");
    let s = agent.scrape();
    assert!(
        s.value("netexporter_sock_inuse", &[("netns", &ns.name)])
            .is_some(),
        "namespace {} missing:\n{}",
        ns.name,
        s.text
    );
    let name = ns.name.clone();
    drop(ns);
    let s = agent.scrape();
    assert!(
        s.find("netexporter_sock_inuse", &[("netns", &name)])
            .is_empty()
    );
}
