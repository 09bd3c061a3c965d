//! The `udp` probe on real namespaces: every counter of both families equals what `nstat`
//! reads inside the namespace, and the datagrams the test sent are there exactly (delivered,
//! to a closed port, sent).

use serde_json::Value;

use crate::harness::*;

/// Per family: `delivered` datagrams read by a receiver, `closed` sent to a port nobody
/// listens on, `flood` sent to a receiver with a one-byte buffer that never reads.
fn scene(ns: &Netns, delivered: usize, closed: usize, flood: usize) {
    let script = format!(
        r#"
import socket, time
for fam, lo in [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]:
    r = socket.socket(fam, socket.SOCK_DGRAM); r.bind((lo, 0)); port = r.getsockname()[1]
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for _ in range({delivered}):
        s.sendto(b"x" * 100, (lo, port))
    for _ in range({delivered}):
        r.recv(2000)
    c = socket.socket(fam, socket.SOCK_DGRAM); c.bind((lo, 0)); gone = c.getsockname()[1]; c.close()
    for _ in range({closed}):
        s.sendto(b"y", (lo, gone))
    full = socket.socket(fam, socket.SOCK_DGRAM)
    full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    full.bind((lo, 0)); fport = full.getsockname()[1]
    for _ in range({flood}):
        s.sendto(b"z" * 1000, (lo, fport))
    time.sleep(0.1)
    full.close()
"#
    );
    ns.run(&["python3", "-c", &script]);
}

const FIELDS: [(&str, &str); 8] = [
    ("netexporter_udp_indatagrams_total", "InDatagrams"),
    ("netexporter_udp_noports_total", "NoPorts"),
    ("netexporter_udp_inerrors_total", "InErrors"),
    ("netexporter_udp_outdatagrams_total", "OutDatagrams"),
    ("netexporter_udp_rcvbuferrors_total", "RcvbufErrors"),
    ("netexporter_udp_sndbuferrors_total", "SndbufErrors"),
    ("netexporter_udp_incsumerrors_total", "InCsumErrors"),
    ("netexporter_udp_memerrors_total", "MemErrors"),
];

#[test]
fn udp_counters_equal_nstat_in_every_namespace() {
    require_root();
    let quiet = Netns::new("nxu");
    let busy = Netns::new("nxu");
    scene(&busy, 7, 3, 40);
    let agent = Agent::start(&[]);
    let s = agent.scrape();
    for (ns, sent) in [(&quiet, None), (&busy, Some((7u64, 3u64, 40u64)))] {
        let nstat: Value =
            serde_json::from_str(&ns.run(&["nstat", "-asz", "--json"])).expect("nstat JSON");
        let kernel = &nstat["kernel"];
        for (family, prefix) in [("ipv4", "Udp"), ("ipv6", "Udp6")] {
            for (metric, field) in FIELDS {
                let want = kernel[format!("{prefix}{field}")]
                    .as_u64()
                    .unwrap_or_else(|| panic!("nstat has no {prefix}{field}"));
                let got = s
                    .value(metric, &[("netns", &ns.name), ("family", family)])
                    .unwrap_or_else(|| panic!("{metric}{{{family}}} of {}:\n{}", ns.name, s.text));
                assert_eq!(
                    got, want as f64,
                    "{metric}{{{family}}} of {} vs nstat {prefix}{field}",
                    ns.name
                );
            }
            if let Some((delivered, closed, flood)) = sent {
                let v = |m: &str| s.value(m, &[("netns", &ns.name), ("family", family)]);
                // Counted when read (udp_recvmsg): the flood's datagram that fit is not.
                assert_eq!(
                    v("netexporter_udp_indatagrams_total"),
                    Some(delivered as f64)
                );
                assert_eq!(v("netexporter_udp_noports_total"), Some(closed as f64));
                assert_eq!(
                    v("netexporter_udp_outdatagrams_total"),
                    Some((delivered + closed + flood) as f64)
                );
                assert!(v("netexporter_udp_rcvbuferrors_total").unwrap_or(0.0) > 0.0);
            }
        }
    }
}
