//! The container image (`Containerfile`, built by `make image` and by `make test` through
//! `scripts/image.sh`) run as `deploy/base/daemonset.yaml` runs it: the security context,
//! mounts, arguments and environment are **read from the manifest** and turned into the
//! equivalent `podman run` flags, so that the manifest and this test cannot drift. Standalone
//! (no cluster here): the agent reads the host and its namespaces through `/host/proc`.
//!
//! It shows: `/healthz` and `/readyz` answer as the manifest's probes expect; every collector
//! succeeds or says why it is unavailable; a test namespace's values equal the kernel's
//! (`sockstat`, `nstat`); the drop counter counts exactly; a namespace without a default route
//! becomes an event on the container's stdout; a line written to the kernel log becomes a
//! KernelLog event (the container's device cgroup refuses `/dev/kmsg`, so through syslog(2)).
//!
//! Where no container runtime can be had, `scripts/image.sh --or-skip` says why in
//! `target/image/unavailable`, and this test prints that and passes; without that file, a
//! missing image is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;

use crate::harness::*;

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/image");
const NODE: &str = "itest-node";

/// The agent's container in the DaemonSet, as `podman run` flags.
struct Manifest {
    flags: Vec<String>,
    args: Vec<String>,
    liveness: String,
    readiness: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// Reads `deploy/base/daemonset.yaml` and turns the Pod's settings into podman's: host network
/// and PID, capabilities, read-only root, no new privileges, the user, every hostPath mount
/// (read-only, propagation), the ConfigMap as `config_dir`, the environment (`spec.nodeName` as
/// `NODE`).
fn manifest(config_dir: &Path) -> Manifest {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/daemonset.yaml");
    let ds: Value = serde_yaml::from_str(&std::fs::read_to_string(path).expect("daemonset"))
        .expect("daemonset YAML");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut flags = Vec::new();
    if pod["hostNetwork"].as_bool() == Some(true) {
        flags.push("--network=host".to_string());
    }
    if pod["hostPID"].as_bool() == Some(true) {
        flags.push("--pid=host".to_string());
    }
    let sc = &c["securityContext"];
    assert_ne!(
        sc["privileged"].as_bool(),
        Some(true),
        "the test runs unprivileged only"
    );
    if strings(&sc["capabilities"]["drop"])
        .iter()
        .any(|d| d == "ALL")
    {
        flags.push("--cap-drop=ALL".to_string());
    }
    for cap in strings(&sc["capabilities"]["add"]) {
        flags.push(format!("--cap-add={cap}"));
    }
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        flags.push("--read-only".to_string());
    }
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        flags.push("--security-opt=no-new-privileges".to_string());
    }
    if let (Some(u), Some(g)) = (sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()) {
        flags.push(format!("--user={u}:{g}"));
    }
    // seccompProfile RuntimeDefault: podman's default profile, as containerd's.
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    for m in c["volumeMounts"].as_sequence().expect("volumeMounts") {
        let name = m["name"].as_str().expect("mount name");
        let target = m["mountPath"].as_str().expect("mountPath");
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name}"));
        let source = if v["configMap"].is_mapping() {
            config_dir.display().to_string()
        } else {
            let host = v["hostPath"]["path"].as_str().expect("hostPath");
            if matches!(v["hostPath"]["type"].as_str(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(host).expect("DirectoryOrCreate");
            }
            host.to_string()
        };
        let mut opts = Vec::new();
        if m["readOnly"].as_bool() == Some(true) {
            opts.push("ro");
        }
        if m["mountPropagation"].as_str() == Some("HostToContainer") {
            opts.push("rslave");
        }
        flags.push(format!("--volume={source}:{target}:{}", opts.join(",")));
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name");
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => v.to_string(),
            (None, Some("spec.nodeName")) => NODE.to_string(),
            other => panic!("env {name}: {other:?} not mapped"),
        };
        flags.push(format!("--env={name}={value}"));
    }
    Manifest {
        flags,
        args: strings(&c["args"]),
        liveness: c["livenessProbe"]["httpGet"]["path"]
            .as_str()
            .expect("liveness")
            .to_string(),
        readiness: c["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .expect("readiness")
            .to_string(),
    }
}

/// The running container; removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]).output().expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn pid(&self) -> u32 {
        let out = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name])
            .output()
            .expect("podman inspect");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("container pid")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "2", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// podman with the containers.conf that scripts/image.sh wrote for this machine.
fn podman(args: &[&str]) -> Command {
    let mut c = Command::new("podman");
    c.args(args)
        .env("CONTAINERS_CONF", Path::new(STATE).join("containers.conf"));
    c
}

/// The image built for this checkout, or `None` (said on stderr) where none can be built here.
fn image() -> Option<String> {
    if let Ok(why) = std::fs::read_to_string(Path::new(STATE).join("unavailable")) {
        // Past the test harness's capture (it takes eprintln!'s output only), so that CI's log
        // shows it although the test passes.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("image_runs_with_the_daemonsets_settings: skipped: {why}").as_bytes(),
        );
        return None;
    }
    let tag = std::fs::read_to_string(Path::new(STATE).join("built"))
        .unwrap_or_else(|_| panic!("no image built: run `make image` (or `make test`) first"));
    Some(tag.trim().to_string())
}

fn event_lines(logs: &str, kind: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.starts_with("{\"timestamp\"") && l.contains(&format!("\"type\":\"{kind}\"")))
        .map(String::from)
        .collect()
}

#[test]
fn image_runs_with_the_daemonsets_settings() {
    require_root();
    let Some(image) = image() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let config_dir: PathBuf = work.path().join("config");
    std::fs::create_dir(&config_dir).expect("config dir");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/config.yaml"),
        config_dir.join("config.yaml"),
    )
    .expect("config.yaml");
    let m = manifest(&config_dir);

    // Before the agent starts: a namespace with an interface up and no default route (a fault
    // the DefaultRoute check reports), and a TCP listener in it.
    let ns = Netns::new("nxim");
    let _veth = Veth::new(&ns, "10.213.0.1/30", "10.213.0.2/30");
    let _listener = ns.spawn(&[
        "python3",
        "-c",
        "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',7000)); l.listen(1)\ntime.sleep(600)",
    ]);

    // The manifest's own way to move the port (its comment on `ports`): a free one.
    let port = free_port();
    let name = unique("net-exporter-itest");
    let mut run = vec!["run", "-d", "--name", &name];
    let flags: Vec<&str> = m.flags.iter().map(String::as_str).collect();
    run.extend_from_slice(&flags);
    run.push(&image);
    let args: Vec<&str> = m.args.iter().map(String::as_str).collect();
    run.extend_from_slice(&args);
    let listen = format!("--web.listen-address=127.0.0.1:{port}");
    run.push(&listen);
    let out = podman(&run).output().expect("podman run");
    let container = Container { name: name.clone() };
    assert!(
        out.status.success(),
        "podman run {run:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The manifest's probes.
    let started = Instant::now();
    let ready = poll(Duration::from_secs(60), || {
        let live = matches!(http_get(port, &m.liveness), Ok((200, _)));
        let ready = matches!(http_get(port, &m.readiness), Ok((200, _)));
        (live && ready).then_some(())
    });
    assert!(
        ready.is_some(),
        "not live and ready within 60 s:\n{}",
        container.logs()
    );
    let ready_after = started.elapsed();

    // Every collector succeeds, or is unavailable with its reason.
    let s = poll(Duration::from_secs(20), || {
        let (code, body) = http_get(port, "/metrics").ok()?;
        (code == 200).then(|| Scrape::parse(&body))
    })
    .expect("scrape");
    let collectors = s.find("netexporter_scrape_collector_success", &[]);
    assert!(collectors.len() > 10, "{}", s.text);
    for c in &collectors {
        assert_eq!(
            c.value,
            1.0,
            "collector {:?} failed:\n{}",
            c.labels,
            container.logs()
        );
    }
    for p in s.find("netexporter_probe_available", &[]) {
        if p.value == 0.0 {
            assert!(p.labels.contains_key("reason"), "{:?}", p.labels);
            eprintln!("unavailable in the container: {:?}", p.labels);
        }
    }

    // A test namespace as the kernel sees it.
    assert_eq!(
        s.value("netexporter_sock_inuse", &[("netns", &ns.name)]),
        Some(ns.sockstat_tcp_inuse() as f64),
        "sock_inuse of {}:\n{}",
        ns.name,
        s.text
    );
    // The drop counter: N datagrams to a closed port, N NO_SOCKET drops; and the udp probe
    // equal to nstat.
    const N: u64 = 23;
    ns.run(&[
        "python3",
        "-c",
        &format!("import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range({N}): s.sendto(b'x', ('127.0.0.1', 9))"),
    ]);
    let s = poll(Duration::from_secs(20), || {
        let (_, body) = http_get(port, "/metrics").ok()?;
        let s = Scrape::parse(&body);
        (s.value(
            "netexporter_packetloss_reason",
            &[("netns", &ns.name), ("reason", "NO_SOCKET")],
        ) == Some(N as f64))
        .then_some(s)
    })
    .unwrap_or_else(|| panic!("no {N} NO_SOCKET drops of {}", ns.name));
    let nstat: serde_json::Value =
        serde_json::from_str(&ns.run(&["nstat", "-asz", "--json"])).expect("nstat");
    assert_eq!(
        s.value(
            "netexporter_udp_noports_total",
            &[("netns", &ns.name), ("family", "ipv4")]
        ),
        nstat["kernel"]["UdpNoPorts"].as_f64(),
        "udp noports vs nstat"
    );

    // The planted fault, as an event on the container's stdout.
    let fault = poll(Duration::from_secs(90), || {
        event_lines(&container.logs(), "DefaultRoute")
            .into_iter()
            .find(|l| l.contains(&ns.name))
    });
    assert!(
        fault.is_some(),
        "no DefaultRoute event for {}:\n{}",
        ns.name,
        container.logs()
    );

    // The kernel log, read inside the container.
    let marker = unique("nxim-kmsg");
    kmsg(&format!(
        "net-exporter test {marker}: nf_conntrack: table full, dropping packet"
    ));
    let logged = poll(Duration::from_secs(20), || {
        event_lines(&container.logs(), "KernelLog")
            .into_iter()
            .find(|l| l.contains(&marker))
    });
    assert!(
        logged.is_some(),
        "no KernelLog event for {marker}:\n{}",
        container.logs()
    );

    let rss = proc_figures(container.pid()).2;
    let size = podman(&["image", "inspect", "--format", "{{.Size}}", &image])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let line = format!(
        "image_runs_with_the_daemonsets_settings: image {image}: {size} bytes; ready after \
         {ready_after:.1?}; agent RSS {rss} KiB; kernel log read through {}\n",
        if container.logs().contains("through syslog(2)") {
            "syslog(2)"
        } else {
            "/dev/kmsg"
        }
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}
