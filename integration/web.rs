//! The HTTP endpoint under load and attack and with its web configuration: concurrent scrapes,
//! slow clients and the timeouts, gzip, TLS with the test's own CA (curl and a real
//! Prometheus), client certificates, basic auth, certificate rotation and the web config
//! file's errors.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

// ---- Helpers ----

/// The agent started with `args` on a free loopback port; killed on drop. Readiness is polled
/// on `/readyz`, which needs no credentials.
struct WebAgent {
    port: u16,
    // Field order is drop order: the process goes before its log.
    proc: Proc,
    log: PathBuf,
}

impl WebAgent {
    /// `tls`: curl's arguments to reach it over HTTPS (`--cacert`, a client certificate).
    fn start(args: &[&str], tls: Option<&[&str]>) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = std::env::temp_dir().join(format!("net-exporter-{}.log", unique("web")));
        let logfile = std::fs::File::create(&log).expect("agent log file");
        let child = Command::new(env!("CARGO_BIN_EXE_net-exporter"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--node-name=itest-node")
            .args(args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log fd"))
            .stderr(logfile)
            .process_group(0)
            .spawn()
            .expect("start net-exporter");
        let mut agent = Self {
            port,
            proc: Proc { child },
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = match tls {
                None => matches!(http_get(port, "/readyz"), Ok((200, _))),
                Some(tls) => agent.curl(tls, "/readyz").status == 200,
            };
            if ready {
                return agent;
            }
            if let Ok(Some(status)) = agent.proc.child.try_wait() {
                panic!("agent exited ({status}); log:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready after 30s; log:\n{}", agent.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// curl over HTTPS to `path` with `args`.
    fn curl(&self, args: &[&str], path: &str) -> Curl {
        let url = self.https(path);
        let mut all = args.to_vec();
        all.push(&url);
        curl(&all)
    }
}

impl Drop for WebAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// What curl got: its exit code, the response's status (0 when there was none), headers
/// (names lowercased) and body.
struct Curl {
    exit: Option<i32>,
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    stderr: String,
}

impl Curl {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl std::fmt::Debug for Curl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "curl exit {:?}, status {}, headers {:?}, stderr {:?}, body {:?}",
            self.exit,
            self.status,
            self.headers,
            self.stderr,
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
        )
    }
}

/// Runs `curl -sS -i` with `args` (a 60 s limit of its own) and splits its answer.
fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl (scripts/install-deps.sh installs it)");
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curl {
        exit: out.status.code(),
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Status, headers (names lowercased) and body of a response.
type Answer = (u16, BTreeMap<String, String>, Vec<u8>);

/// One HTTP/1.1 GET with `Connection: close`.
fn get_full(port: u16, path: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}

fn collections_total(port: u16) -> f64 {
    let (status, body) = http_get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200, "scrape: {body}");
    Scrape::parse(&body)
        .value("netexporter_collections_total", &[])
        .expect("netexporter_collections_total")
}

/// A temporary directory with files written into it.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<ca>.pem`, `<ca>.key`) in `dir`, made with openssl.
fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=net-exporter test {ca}"),
        ],
    );
}

/// A certificate `<name>.pem` with key `<name>.key` signed by CA `ca`, for a server on
/// 127.0.0.1 (`serverAuth`) or a client (`clientAuth`).
fn make_cert(dir: &Path, ca: &str, name: &str, usage: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    write(
        dir,
        &format!("{name}.ext"),
        &format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        ),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

// ---- Concurrency and slow clients ----

/// 200 clients scraping at the same moment all get a complete `/metrics`, and they share
/// collections: `netexporter_collections_total` rises by far fewer than 200.
#[test]
fn two_hundred_concurrent_scrapes_coalesce() {
    require_root();
    // Enough namespaces that a collection takes a while, so that scrapes overlap.
    let namespaces: Vec<Netns> = (0..20).map(|_| Netns::new("nxw")).collect();
    let agent = Agent::start(&[]);
    let before = collections_total(agent.port);
    const N: usize = 200;
    let start = std::sync::Barrier::new(N);
    let answers: Vec<std::io::Result<Answer>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    get_full(agent.port, "/metrics")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scrape thread"))
            .collect()
    });
    for (i, answer) in answers.into_iter().enumerate() {
        let (status, headers, body) =
            answer.unwrap_or_else(|e| panic!("scrape {i} failed: {e}; log:\n{}", agent.log_text()));
        assert_eq!(
            status,
            200,
            "scrape {i}: {}",
            String::from_utf8_lossy(&body)
        );
        // Complete: as long as announced, whole lines, every namespace in it.
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("scrape {i}: no content-length in {headers:?}"));
        assert_eq!(body.len(), length, "scrape {i}: truncated body");
        let text = String::from_utf8(body).expect("UTF-8 scrape");
        assert!(
            text.ends_with('\n'),
            "scrape {i} does not end with a newline"
        );
        let scrape = Scrape::parse(&text);
        assert!(
            scrape.value("netexporter_collections_total", &[]).is_some(),
            "scrape {i} lacks netexporter_collections_total"
        );
        for ns in &namespaces {
            assert!(
                scrape
                    .value("netexporter_sock_inuse", &[("netns", &ns.name)])
                    .is_some(),
                "scrape {i} lacks namespace {}",
                ns.name
            );
        }
    }
    // `after` counts the concurrent scrapes' collections plus this last scrape's own.
    let used = collections_total(agent.port) - before - 1.0;
    eprintln!("{N} concurrent scrapes ran {used} collections");
    assert!(
        (1.0..=(N / 4) as f64).contains(&used),
        "{N} concurrent scrapes ran {used} collections: they should share them"
    );
}

/// Whether the server has closed `s`: a read sees the end (or a reset) rather than nothing.
fn closed_by_server(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 512];
    let mut reader = s;
    let closed = loop {
        match reader.read(&mut buf) {
            Ok(0) => break true,
            // An error response before the close: keep reading.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let _ = s.set_nonblocking(false);
    closed
}

/// Twenty clients that send their request headers one byte per second, or nothing at all, do
/// not hold up anyone: ten scrapes in a row complete while every one of them is still
/// connected (the header read timeout is 60 s here, so that none is cut off meanwhile).
#[test]
fn slow_clients_do_not_hold_up_scrapes() {
    require_root();
    let dir = temp_dir("net-exporter-web");
    let config = write(
        dir.path(),
        "config.yaml",
        "web:\n  read_header_timeout: 60s\n",
    );
    let agent = Agent::start(&[&format!("--config.file={}", config.display())]);
    let stop = AtomicBool::new(false);
    let cut_off = std::sync::atomic::AtomicUsize::new(0);
    // Silent clients: connected, nothing sent.
    let silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", agent.port)).expect("connect"))
        .collect();
    std::thread::scope(|s| {
        let (stop, cut_off) = (&stop, &cut_off);
        for _ in 0..10 {
            let port = agent.port;
            s.spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let byte = request.get(sent).copied().unwrap_or(b'a');
                    if c.write_all(&[byte]).is_err() || closed_by_server(&c) {
                        cut_off.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    sent += 1;
                    // One byte per second, watching `stop` meanwhile.
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
        // Let the slow clients start.
        std::thread::sleep(Duration::from_secs(2));
        let mut scraped = 0;
        for i in 0..10 {
            let (status, body) = http_get(agent.port, "/metrics")
                .unwrap_or_else(|e| panic!("scrape {i} with slow clients connected: {e}"));
            assert_eq!(status, 200, "scrape {i}: {body}");
            assert!(body.contains("netexporter_collections_total"));
            scraped += 1;
        }
        let silent_cut = silent.iter().filter(|c| closed_by_server(c)).count();
        let dribblers_cut = cut_off.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(scraped, 10);
        assert_eq!(
            (silent_cut, dribblers_cut),
            (0, 0),
            "slow clients were cut off before the scrapes completed (the header timeout is 60s)"
        );
    });
}

/// The header read timeout (2 s here) cuts off a client that sends its headers one byte per
/// second, one that sends nothing, and an idle keep-alive connection; the agent serves on.
#[test]
fn header_read_timeout_cuts_off_slow_clients() {
    require_root();
    let dir = temp_dir("net-exporter-web");
    let config = write(
        dir.path(),
        "config.yaml",
        "web:\n  read_header_timeout: 2s\n",
    );
    let agent = Agent::start(&[&format!("--config.file={}", config.display())]);
    let port = agent.port;
    let dribbler = std::thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        let mut sent = 0usize;
        while Instant::now() < deadline {
            let byte = request.get(sent).copied().unwrap_or(b'a');
            if c.write_all(&[byte]).is_err() || closed_by_server(&c) {
                return true;
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    });
    let silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send request");
    let mut first = [0u8; 64];
    let n = idle.read(&mut first).expect("read response");
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    let gone = poll(Duration::from_secs(30), || {
        (closed_by_server(&silent) && closed_by_server(&idle)).then_some(())
    });
    assert!(
        gone.is_some(),
        "a silent client or an idle keep-alive connection still open after 30s"
    );
    assert!(
        dribbler.join().expect("dribbler thread"),
        "the client sending one byte per second was not cut off within 30s"
    );
    assert_eq!(http_get(port, "/healthz").expect("healthz").0, 200);
    assert!(collections_total(port) >= 1.0);
}

/// At `web.max_connections` (3 here) idle clients, a scrape waits in the backlog instead of
/// being refused, and is served once the header timeout (2 s) has closed an idle connection;
/// the limit is logged once. The agent also raised its soft open-files limit to the hard one
/// (started here with a soft limit of 1024).
#[test]
fn connection_limit_makes_new_clients_wait_not_fail() {
    require_root();
    let dir = temp_dir("net-exporter-web");
    let config = write(
        dir.path(),
        "config.yaml",
        "web:\n  read_header_timeout: 2s\n  max_connections: 3\n",
    );
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        })
        .expect("hard open files limit of the test");
    let agent = Agent::start_custom(
        &[&format!("--config.file={}", config.display())],
        &[],
        |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = lim.rlim_cur.min(1024);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).expect("limits");
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("soft open files limit of the agent");
    assert_eq!(soft, hard, "soft open-files limit not raised:\n{limits}");

    let port = agent.port;
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let (status, body) = http_get(port, "/metrics").expect("scrape behind the limit");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("netexporter_collections_total"));
    let log = agent.log_text();
    assert_eq!(
        log.matches("connection limit reached").count(),
        1,
        "the limit is logged once:\n{log}"
    );
    drop(idle);
    assert_eq!(http_get(port, "/healthz").expect("healthz").0, 200);
}

/// A request that takes longer than `web.request_timeout` gets a 503 (here: 1 ms, shorter
/// than any collection of 30 namespaces); the agent serves on.
#[test]
fn request_timeout_cuts_off_slow_requests() {
    require_root();
    let _namespaces: Vec<Netns> = (0..30).map(|_| Netns::new("nxt")).collect();
    let dir = temp_dir("net-exporter-web");
    let config = write(dir.path(), "config.yaml", "web:\n  request_timeout: 1ms\n");
    let agent = Agent::start(&[&format!("--config.file={}", config.display())]);
    let (status, body) = http_get(agent.port, "/metrics").expect("scrape");
    assert_eq!(status, 503, "a scrape slower than 1ms: {body}");
    assert_eq!(http_get(agent.port, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(agent.port, "/readyz").expect("readyz").0, 200);
}

// ---- gzip ----

/// A scraper that accepts gzip gets a gzip body with `Content-Encoding: gzip` (curl
/// `--compressed`, and the raw bytes decoded here); any other gets plain text.
#[test]
fn gzip_when_the_scraper_asks_for_it() {
    require_root();
    let agent = Agent::start(&[]);
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);

    let c = curl(&["--compressed", &url]);
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.header("content-encoding"), Some("gzip"), "{c:?}");
    assert!(
        c.header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
        "{c:?}"
    );
    let decoded = Scrape::parse(&c.text());
    assert!(
        decoded
            .value("netexporter_collections_total", &[])
            .is_some()
    );

    let plain = curl(&[&url]);
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.header("content-encoding"), None, "{plain:?}");
    assert!(
        Scrape::parse(&plain.text())
            .value("netexporter_collections_total", &[])
            .is_some()
    );

    let raw = curl(&["-H", "Accept-Encoding: gzip", &url]);
    assert_eq!(raw.header("content-encoding"), Some("gzip"), "{raw:?}");
    assert!(raw.body.starts_with(&[0x1f, 0x8b]), "not gzip: {raw:?}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw.body.as_slice())
        .read_to_string(&mut text)
        .expect("gunzip the body");
    let scrape = Scrape::parse(&text);
    assert!(scrape.value("netexporter_collections_total", &[]).is_some());
    assert!(
        raw.body.len() * 3 < text.len(),
        "gzip should shrink the text: {} -> {}",
        text.len(),
        raw.body.len()
    );

    for refused in ["gzip;q=0", "br", "identity"] {
        let c = curl(&["-H", &format!("Accept-Encoding: {refused}"), &url]);
        assert_eq!(c.status, 200, "{refused}: {c:?}");
        assert_eq!(c.header("content-encoding"), None, "{refused}: {c:?}");
        assert!(c.text().contains("netexporter_collections_total"));
    }
}

// ---- TLS and basic auth ----

/// A CA and a server certificate for 127.0.0.1, and a web config file with TLS and the user
/// `prom` (password `s3cret`); the certificate paths are relative to the file.
fn tls_auth_setup(dir: &Path) -> PathBuf {
    make_ca(dir, "ca");
    make_cert(dir, "ca", "server", "serverAuth");
    let hash = bcrypt::hash("s3cret", 5).expect("bcrypt");
    write(
        dir,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
             basic_auth_users:\n  prom: '{hash}'\n"
        ),
    )
}

/// With TLS and basic auth: the right password gets 200, a wrong one, an unknown user and
/// none get 401; the probes need no password; plain HTTP and an unknown CA get nothing; gzip
/// works over TLS; a rotated certificate is served without a restart.
#[test]
fn tls_and_basic_auth_with_curl() {
    require_root();
    let dir = temp_dir("net-exporter-tls");
    let web = tls_auth_setup(dir.path());
    let ca = dir.path().join("ca.pem");
    let cacert = path(&ca);
    let agent = WebAgent::start(
        &[&format!("--web.config.file={}", path(&web))],
        Some(&["--cacert", &cacert]),
    );

    let ok = agent.curl(&["--cacert", &cacert, "-u", "prom:s3cret"], "/metrics");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        Scrape::parse(&ok.text())
            .value("netexporter_collections_total", &[])
            .is_some()
    );
    let index = agent.curl(&["--cacert", &cacert, "-u", "prom:s3cret"], "/");
    assert_eq!(index.status, 200, "{index:?}");

    for (what, args) in [
        ("wrong password", vec!["-u", "prom:wrong"]),
        ("unknown user", vec!["-u", "grafana:s3cret"]),
        ("no credentials", vec![]),
    ] {
        let mut all = vec!["--cacert", cacert.as_str()];
        all.extend(args);
        for p in ["/metrics", "/"] {
            let c = agent.curl(&all, p);
            assert_eq!(c.status, 401, "{what} on {p}: {c:?}");
            assert!(
                c.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Basic")),
                "{what}: {c:?}"
            );
            assert!(!c.text().contains("netexporter_"), "{what}: {c:?}");
        }
    }
    for probe in ["/healthz", "/readyz"] {
        let c = agent.curl(&["--cacert", &cacert], probe);
        assert_eq!(c.status, 200, "{probe} without credentials: {c:?}");
    }

    let gz = agent.curl(
        &["--cacert", &cacert, "-u", "prom:s3cret", "--compressed"],
        "/metrics",
    );
    assert_eq!(gz.status, 200, "{gz:?}");
    assert_eq!(gz.header("content-encoding"), Some("gzip"), "{gz:?}");
    assert!(gz.text().contains("netexporter_collections_total"));

    // Not without TLS, and not with a CA that did not sign the certificate.
    let plain = curl(&[&format!("http://127.0.0.1:{}/healthz", agent.port)]);
    assert_ne!(plain.status, 200, "plain HTTP on the TLS port: {plain:?}");
    let unknown = agent.curl(&["-u", "prom:s3cret"], "/metrics");
    assert_eq!(unknown.exit, Some(60), "no CA given: {unknown:?}");

    // Rotation: a certificate of another CA replaces the files; new connections get it.
    make_ca(dir.path(), "ca2");
    make_cert(dir.path(), "ca2", "server2", "serverAuth");
    for (from, to) in [("server2.key", "server.key"), ("server2.pem", "server.pem")] {
        let tmp = dir.path().join(format!("{to}.new"));
        std::fs::copy(dir.path().join(from), &tmp).expect("copy the new certificate");
        std::fs::rename(&tmp, dir.path().join(to)).expect("replace the certificate");
    }
    let ca2 = path(&dir.path().join("ca2.pem"));
    let rotated = poll(Duration::from_secs(30), || {
        let c = agent.curl(&["--cacert", &ca2, "-u", "prom:s3cret"], "/metrics");
        (c.status == 200).then_some(c)
    });
    assert!(
        rotated.is_some(),
        "the rotated certificate is not served; log:\n{}",
        agent.log_text()
    );
    let old = agent.curl(&["--cacert", &cacert], "/healthz");
    assert_eq!(old.exit, Some(60), "the old CA still verifies: {old:?}");
}

/// `RequireAndVerifyClientCert`: a client with a certificate of the client CA gets in, one
/// without does not; `min_version: TLS13` turns TLS 1.2 clients away.
#[test]
fn client_certificates_and_min_version() {
    require_root();
    let dir = temp_dir("net-exporter-mtls");
    make_ca(dir.path(), "ca");
    make_cert(dir.path(), "ca", "server", "serverAuth");
    make_ca(dir.path(), "clientca");
    make_cert(dir.path(), "clientca", "client", "clientAuth");
    make_ca(dir.path(), "otherca");
    make_cert(dir.path(), "otherca", "stranger", "clientAuth");
    let web = write(
        dir.path(),
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clientca.pem\n  \
             min_version: TLS13\n",
            dir.path().display()
        ),
    );
    let d = |f: &str| path(&dir.path().join(f));
    let (ca, client, client_key) = (d("ca.pem"), d("client.pem"), d("client.key"));
    let with_cert = ["--cacert", &ca, "--cert", &client, "--key", &client_key];
    // Readiness, too, needs a client certificate here.
    let agent = WebAgent::start(
        &[&format!("--web.config.file={}", path(&web))],
        Some(&with_cert),
    );
    let url = |p: &str| agent.https(p);

    let mut a = with_cert.to_vec();
    let u = url("/metrics");
    a.push(&u);
    let ok = curl(&a);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.text().contains("netexporter_collections_total"));

    let none = curl(&["--cacert", &d("ca.pem"), &url("/healthz")]);
    assert_ne!(none.status, 200, "no client certificate: {none:?}");
    assert_ne!(none.exit, Some(0), "no client certificate: {none:?}");
    let stranger = curl(&[
        "--cacert",
        &d("ca.pem"),
        "--cert",
        &d("stranger.pem"),
        "--key",
        &d("stranger.key"),
        &url("/healthz"),
    ]);
    assert_ne!(
        stranger.status, 200,
        "a certificate of another CA: {stranger:?}"
    );

    let mut old = with_cert.to_vec();
    old.extend(["--tlsv1.2", "--tls-max", "1.2"]);
    let u = url("/healthz");
    old.push(&u);
    let tls12 = curl(&old);
    assert_ne!(
        tls12.status, 200,
        "TLS 1.2 under min_version TLS13: {tls12:?}"
    );
}

// ---- A real Prometheus ----

/// Prometheus on a free loopback port with `config` and its TSDB in a temp dir; killed on
/// drop, then the dir removed.
struct Prom(PromServer);

impl Prom {
    fn start(config: &str) -> Self {
        Self(PromServer::with_config(
            temp_dir("net-exporter-prom"),
            config,
        ))
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// An instant query: the value of each series, by its `job` label.
    fn query(&self, promql: &str) -> BTreeMap<String, f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) =
            http_get(self.0.port, &format!("/api/v1/query?query={encoded}")).expect("query");
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r["metric"]["job"].as_str()?.to_string(),
                    r["value"][1].as_str()?.parse().ok()?,
                ))
            })
            .collect()
    }
}

/// A real Prometheus scrapes the agent over TLS (verifying it with the test's CA) with basic
/// auth: `up` is 1 and the agent's series are queryable; a job with a wrong password is down.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    require_root();
    let dir = temp_dir("net-exporter-tls");
    let web = tls_auth_setup(dir.path());
    let ca = dir.path().join("ca.pem");
    let cacert = path(&ca);
    let agent = WebAgent::start(
        &[&format!("--web.config.file={}", path(&web))],
        Some(&["--cacert", &cacert]),
    );
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n    \
             basic_auth:\n      username: prom\n      password: {password}\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            ca.display(),
            agent.port
        )
    };
    let prom = Prom::start(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}",
        job("tls-good", "s3cret"),
        job("tls-bad", "wrong")
    ));
    let up = poll(Duration::from_secs(30), || {
        let up = prom.query("up");
        let series = prom.query("netexporter_collections_total");
        (up.len() == 2 && series.contains_key("tls-good")).then_some((up, series))
    });
    let Some((up, series)) = up else {
        panic!(
            "prometheus has not scraped over TLS after 30s; targets: {:?}\nprometheus log:\n{}\nagent log:\n{}",
            http_get(prom.0.port, "/api/v1/targets"),
            prom.log(),
            agent.log_text()
        );
    };
    assert_eq!(up.get("tls-good"), Some(&1.0), "up: {up:?}");
    assert_eq!(up.get("tls-bad"), Some(&0.0), "up: {up:?}");
    assert!(series["tls-good"] >= 1.0, "{series:?}");
    assert!(!series.contains_key("tls-bad"), "{series:?}");
    let sock = prom.query("netexporter_sock_inuse{job=\"tls-good\"}");
    assert!(
        !sock.is_empty(),
        "no netexporter_sock_inuse from the TLS job"
    );
}

// ---- Configuration errors ----

/// A bad web config file or `web:` setting exits with 2 and names the field.
#[test]
fn bad_web_configuration_exits_2_naming_the_field() {
    let dir = temp_dir("net-exporter-webcfg");
    let d = dir.path();
    make_ca(d, "ca");
    make_cert(d, "ca", "server", "serverAuth");
    make_cert(d, "ca", "other", "serverAuth");
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let web =
        |name: &str, text: &str| format!("--web.config.file={}", write(d, name, text).display());
    let config =
        |name: &str, text: &str| format!("--config.file={}", write(d, name, text).display());
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    let cases: Vec<(String, &str)> = vec![
        (
            web("top.yml", "tls_config:\n  cert_file: a\n"),
            "tls_config",
        ),
        (
            web("nested.yml", &format!("{tls}  cert: inline\n")),
            "unknown field `cert`",
        ),
        (
            web(
                "nocert.yml",
                "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
            ),
            "tls_server_config.cert_file",
        ),
        (
            web("nokey.yml", "tls_server_config:\n  cert_file: server.pem\n"),
            "key_file",
        ),
        (
            web(
                "mismatch.yml",
                "tls_server_config:\n  cert_file: server.pem\n  key_file: other.key\n",
            ),
            "tls_server_config.key_file",
        ),
        (
            web(
                "notpem.yml",
                "tls_server_config:\n  cert_file: mismatch.yml\n  key_file: server.key\n",
            ),
            "tls_server_config.cert_file",
        ),
        (
            web(
                "anycert.yml",
                &format!("{tls}  client_auth_type: RequireAnyClientCert\n"),
            ),
            "tls_server_config.client_auth_type",
        ),
        (
            web(
                "noca.yml",
                &format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
            ),
            "tls_server_config.client_ca_file",
        ),
        (
            web("tls10.yml", &format!("{tls}  min_version: TLS10\n")),
            "tls_server_config.min_version",
        ),
        (
            web("hash.yml", "basic_auth_users:\n  prom: plaintext\n"),
            "basic_auth_users.prom",
        ),
        (
            web(
                "colon.yml",
                &format!("basic_auth_users:\n  'a:b': '{hash}'\n"),
            ),
            "basic_auth_users.a:b",
        ),
        (
            "--web.config.file=/nonexistent/web.yml".to_string(),
            "--web.config.file",
        ),
        (
            config("rht.yaml", "web:\n  read_header_timeout: soon\n"),
            "web.read_header_timeout",
        ),
        (
            config("rt.yaml", "web:\n  request_timeout: 0s\n"),
            "web.request_timeout",
        ),
        (
            config("cf.yaml", "web:\n  config_file: /nonexistent/web.yml\n"),
            "--web.config.file",
        ),
    ];
    for (arg, field) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_net-exporter"))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(&arg)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .expect("run net-exporter");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg}: stderr: {stderr}");
        assert!(
            stderr.contains(field),
            "{arg}: stderr should name {field:?}: {stderr}"
        );
    }
}
