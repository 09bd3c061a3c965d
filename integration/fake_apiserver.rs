//! A small fake Kubernetes API server for the Kubernetes-mode tests. It serves the agent's real
//! `kube` client over plain HTTP on a loopback port, with the shapes of the real API:
//!
//! - `GET /api/v1/pods` and `GET /api/v1/nodes`: a `PodList`/`NodeList` of the objects that match
//!   the `fieldSelector` (`spec.nodeName`, `metadata.name`, ...; an unsupported field is a 400
//!   as on the real server), with the store's current `resourceVersion` (`limit` is taken
//!   but every list fits one page: no `continue`);
//! - the same with `watch=true`: a chunked stream of newline-separated watch events
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when `allowWatchBookmarks=true`) for the changes
//!   after `resourceVersion` (an empty or `0` version first gets every current object as
//!   `ADDED`; `sendInitialEvents=true` ends those with the `k8s.io/initial-events-end`
//!   bookmark), open until `timeoutSeconds` or until the server stops; a version older than the
//!   last [`FakeApiServer::compact`] gets the real server's `ERROR` event with a 410 `Status`.
//!
//! - the same for NetworkPolicies (`GET /apis/networking.k8s.io/v1/networkpolicies`), Services
//!   (`/api/v1/services`), EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`) and
//!   ConfigMaps (`/api/v1/configmaps`),
//!   also per namespace (`.../namespaces/<ns>/<plural>`), with their `List` kinds and API
//!   versions; `limit` pages a list as the real server does (`metadata.continue` and
//!   `remainingItemCount`, the next page from `continue=<token>`);
//! - `GET .../namespaces/<ns>/<plural>/<name>` (and `/api/v1/nodes/<name>`): the object, or a 404
//!   `Status` of reason `NotFound` with `details` as the real server sends it.
//!
//! - lists and watches asked for as metadata only (`Accept: ...;as=PartialObjectMetadataList`
//!   or `as=PartialObjectMetadata`) answer `meta.k8s.io/v1` `PartialObjectMetadata(List)`:
//!   only the objects' metadata crosses the wire;
//! - streaming lists (`sendInitialEvents=true`) are served, or refused with the 422 of a
//!   server whose WatchList feature gate is off ([`FakeApiServer::refuse_streaming_lists`]).
//!
//! The objects and their history live in a store beside the server, like etcd beside a real API
//! server: the server can be stopped and started again on the same port while the tests change
//! the objects. Every request is logged ([`FakeApiServer::log`]): its line, when it came, who
//! sent it (the bearer token of [`FakeApiServer::write_kubeconfig_as`]) and how many body
//! bytes it was answered with (a watch: until it ends). The server, its
//! runtime and a placeholder socket that keeps its port while it is stopped are released on
//! drop.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use futures::SinkExt;
use serde_json::{Value, json};

/// How often an open watch that asked for bookmarks gets one (the real server: about a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// The first resourceVersion the store hands out.
const FIRST_RV: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Node,
    NetworkPolicy,
    Service,
    EndpointSlice,
    ConfigMap,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Pod,
        Kind::Node,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ConfigMap,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// `apiVersion` of its objects and lists.
    fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Where its resources are: `/api/v1` (core) or `/apis/<group>/<version>`.
    fn prefix(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "/apis/networking.k8s.io/v1",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1",
            _ => "/api/v1",
        }
    }

    /// Its resource name in paths.
    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::ConfigMap => "configmaps",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Node
    }

    /// Field selector labels the real API server accepts for the kind (a subset).
    fn supports(self, field: &str) -> bool {
        match self {
            Kind::Pod => matches!(
                field,
                "metadata.name"
                    | "metadata.namespace"
                    | "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "spec.hostNetwork"
                    | "status.phase"
                    | "status.podIP"
                    | "status.nominatedNodeName"
            ),
            Kind::Node => matches!(field, "metadata.name" | "spec.unschedulable"),
            Kind::Service => matches!(
                field,
                "metadata.name" | "metadata.namespace" | "spec.clusterIP" | "spec.type"
            ),
            Kind::NetworkPolicy | Kind::EndpointSlice | Kind::ConfigMap => {
                matches!(field, "metadata.name" | "metadata.namespace")
            }
        }
    }
}

/// What a request path names: every object of a kind (in one namespace or all), or one object.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    /// `<prefix>/<plural>[/<name>]` or `<prefix>/namespaces/<ns>/<plural>[/<name>]`.
    fn parse(path: &str) -> Option<Self> {
        for kind in Kind::ALL {
            let Some(rest) = path.strip_prefix(kind.prefix()) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').skip(1).collect();
            let (namespace, tail) = match parts.as_slice() {
                ["namespaces", ns, tail @ ..] if kind.namespaced() && !tail.is_empty() => {
                    (Some(ns.to_string()), tail)
                }
                tail => (None, tail),
            };
            let name = match tail {
                [plural] if *plural == kind.plural() => None,
                // Cluster-wide gets are of cluster-scoped kinds only.
                [plural, name]
                    if *plural == kind.plural()
                        && !name.is_empty()
                        && (namespace.is_some() || !kind.namespaced()) =>
                {
                    Some(name.to_string())
                }
                _ => continue,
            };
            return Some(Self {
                kind,
                namespace,
                name,
            });
        }
        None
    }
}

/// One change of the store.
struct Change {
    rv: u64,
    kind: Kind,
    kind_of_event: &'static str,
    object: Value,
}

#[derive(Default)]
struct Data {
    rv: u64,
    /// (kind, namespace, name) -> object, as served in watch events (with kind and apiVersion).
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    requests: Vec<Logged>,
    /// Streaming lists are refused (422) while set.
    refuse_streaming: bool,
    /// BOOKMARK events sent on open watches (beside the initial-events-end ones).
    bookmarks: u64,
    /// Every request fails with this status while set.
    failing: Option<StatusCode>,
}

/// One request the server got.
#[derive(Clone, Debug)]
pub struct Logged {
    /// `GET /api/v1/pods?...`
    pub line: String,
    /// The bearer token it came with (`""`: none).
    pub who: String,
    pub at: std::time::Instant,
    /// Asked for metadata only (`PartialObjectMetadata`).
    pub metadata_only: bool,
    /// Response body bytes sent (so far, for a watch still open).
    pub bytes: u64,
}

impl Logged {
    /// A list (or get): any request but a watch.
    pub fn is_list(&self) -> bool {
        !(self.line.contains("watch=true") || self.line.contains("watch=1"))
    }
}

/// The objects, their history and the request log; survives restarts of the server.
struct Store {
    data: Mutex<Data>,
    /// The latest resourceVersion; open watches wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, kind: Kind, kind_of_event: &'static str, mut object: Value) {
        let mut d = self.lock();
        d.rv += 1;
        let rv = d.rv;
        object["kind"] = json!(kind.name());
        object["apiVersion"] = json!(kind.api_version());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(kind, &object);
        if kind_of_event == "DELETED" {
            d.objects.remove(&key);
        } else {
            d.objects.insert(key, object.clone());
        }
        d.history.push(Change {
            rv,
            kind,
            kind_of_event,
            object,
        });
        drop(d);
        self.changed.send_replace(rv);
    }

    /// Watch lines for the changes after `cursor` that match, and the new cursor; `None` once
    /// the history after `cursor` is gone (the watch must end).
    fn after(
        &self,
        kind: Kind,
        sel: &Selector,
        cursor: u64,
        meta_only: bool,
    ) -> Option<(Vec<String>, u64)> {
        let d = self.lock();
        if cursor < d.compacted {
            return None;
        }
        let lines = d
            .history
            .iter()
            .filter(|c| c.rv > cursor && c.kind == kind && sel.matches(&c.object))
            .map(|c| event_line(c.kind_of_event, &shaped(&c.object, meta_only)))
            .collect();
        Some((lines, d.rv.max(cursor)))
    }
}

fn key_of(kind: Kind, object: &Value) -> (Kind, String, String) {
    let meta = &object["metadata"];
    (
        kind,
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"]
            .as_str()
            .expect("object without metadata.name")
            .to_string(),
    )
}

/// `object` as sent: whole, or its metadata only (`PartialObjectMetadata`) when asked for.
fn shaped(object: &Value, meta_only: bool) -> Value {
    if !meta_only {
        return object.clone();
    }
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"],
    })
}

fn event_line(kind_of_event: &str, object: &Value) -> String {
    let mut line = json!({ "type": kind_of_event, "object": object }).to_string();
    line.push('\n');
    line
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> String {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": kind.name(), "apiVersion": kind.api_version(), "metadata": meta }),
    )
}

/// A parsed `fieldSelector`: `a=b,c!=d` (`==` is `=`).
struct Selector(Vec<(String, bool, String)>);

impl Selector {
    fn parse(kind: Kind, text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{text}'"));
            };
            if !kind.supports(field) {
                return Err(format!(
                    "field label not supported: {field} (\"{field}\" is not a known field selector for {}s)",
                    kind.name()
                ));
            }
            out.push((field.to_string(), equal, value.to_string()));
        }
        Ok(Self(out))
    }

    fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let mut v = object;
            for part in field.split('.') {
                v = &v[part];
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Null if field == "spec.hostNetwork" => "false".into(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// `%XX` and `+` decoding of a query component.
fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {},
            "code": code.as_u16(),
        }),
    )
}

/// What one running instance of the server shares with its handlers.
struct Ctx {
    store: Arc<Store>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Logs the request, answers it, and counts the bytes of the answer's body as they go out.
async fn handle(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    use futures::StreamExt;
    let who = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let metadata_only = wants_metadata_only(&req);
    let index = {
        let mut d = ctx.store.lock();
        d.requests.push(Logged {
            line: format!("{} {}", req.method(), req.uri()),
            who,
            at: std::time::Instant::now(),
            metadata_only,
            bytes: 0,
        });
        d.requests.len() - 1
    };
    let (parts, body) = answer(&ctx, req).into_parts();
    let store = Arc::clone(&ctx.store);
    let counted = body.into_data_stream().map(move |chunk| {
        if let Ok(b) = &chunk {
            store.lock().requests[index].bytes += b.len() as u64;
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(counted))
}

/// kube asks `application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1` (or
/// `as=PartialObjectMetadata` for a watch) for metadata only.
fn wants_metadata_only(req: &Request) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"))
}

fn answer(ctx: &Ctx, req: Request) -> Response {
    let failing = ctx.store.lock().failing;
    if let Some(code) = failing {
        return match code {
            StatusCode::SERVICE_UNAVAILABLE => status(
                code,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            StatusCode::INTERNAL_SERVER_ERROR => {
                status(code, "InternalError", "etcdserver: request timed out")
            }
            _ => status(code, "Failure", "injected failure"),
        };
    }
    let Some(target) = Target::parse(req.uri().path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let kind = target.kind;
    if req.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        );
    }
    if let Some(name) = &target.name {
        return get(ctx, kind, target.namespace.as_deref().unwrap_or(""), name);
    }
    let meta_only = wants_metadata_only(&req);
    let q = query(&req);
    let mut sel = match Selector::parse(kind, q.get("fieldSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if let Some(ns) = target.namespace {
        sel.0.push(("metadata.namespace".into(), true, ns));
    }
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        watch(ctx, kind, sel, &q, meta_only)
    } else {
        list(ctx, kind, &sel, &q, meta_only)
    }
}

/// One object, or the real server's 404.
fn get(ctx: &Ctx, kind: Kind, namespace: &str, name: &str) -> Response {
    let key = (kind, namespace.to_string(), name.to_string());
    match ctx.store.lock().objects.get(&key) {
        Some(o) => json_response(StatusCode::OK, o),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("{} \"{name}\" not found", kind.plural()),
                "reason": "NotFound",
                "details": { "name": name, "kind": kind.plural() },
                "code": 404,
            }),
        ),
    }
}

/// The opaque `continue` token of a paged list: where the next page starts (hex, so that it
/// survives any query encoding).
fn continue_token(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_continue(token: &str) -> Option<(String, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (ns, name) = text.split_once('/')?;
    Some((ns.to_string(), name.to_string()))
}

fn list(
    ctx: &Ctx,
    kind: Kind,
    sel: &Selector,
    q: &HashMap<String, String>,
    meta_only: bool,
) -> Response {
    let after = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match parse_continue(c) {
            Some(k) => Some(k),
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "continue key is not valid: illegal base64 data at input byte 0",
                );
            }
        },
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let d = ctx.store.lock();
    let matching: Vec<(&(Kind, String, String), &Value)> = d
        .objects
        .iter()
        .filter(|((k, ns, name), o)| {
            *k == kind
                && sel.matches(o)
                && after
                    .as_ref()
                    .is_none_or(|(a_ns, a_name)| (ns, name) > (a_ns, a_name))
        })
        .collect();
    let page = limit.map_or(matching.len(), |l| l.min(matching.len()));
    let items: Vec<Value> = matching[..page]
        .iter()
        .map(|(_, o)| {
            if meta_only {
                return shaped(o, true);
            }
            // Items of a typed list carry no kind and apiVersion.
            let mut o = (*o).clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut meta = json!({ "resourceVersion": d.rv.to_string() });
    if page < matching.len() {
        let ((_, ns, name), _) = matching[page - 1];
        meta["continue"] = json!(continue_token(ns, name));
        meta["remainingItemCount"] = json!(matching.len() - page);
    }
    let (list_kind, api_version) = if meta_only {
        ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1")
    } else {
        (format!("{}List", kind.name()), kind.api_version())
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": list_kind,
            "apiVersion": api_version,
            "metadata": meta,
            "items": items,
        }),
    )
}

fn watch(
    ctx: &Ctx,
    kind: Kind,
    sel: Selector,
    q: &HashMap<String, String>,
    meta_only: bool,
) -> Response {
    let rv = q.get("resourceVersion").map_or("", String::as_str);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial_events = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    if q.contains_key("sendInitialEvents") && ctx.store.lock().refuse_streaming {
        // What a server with the WatchList feature gate off answers.
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                "reason": "Invalid",
                "details": { "group": "meta.k8s.io", "kind": "ListOptions", "causes": [{
                    "reason": "FieldValueForbidden",
                    "message": "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                    "field": "sendInitialEvents",
                }] },
                "code": 422,
            }),
        );
    }

    // Subscribed before the first read, so that no change between the two is missed.
    let mut changed = ctx.store.changed.subscribe();
    let mut first: Vec<String> = Vec::new();
    let cursor = {
        let d = ctx.store.lock();
        if rv.is_empty() || rv == "0" {
            // "Start at any/most recent": every current object as ADDED first.
            first.extend(
                d.objects
                    .iter()
                    .filter(|((k, _, _), o)| *k == kind && sel.matches(o))
                    .map(|(_, o)| event_line("ADDED", &shaped(o, meta_only))),
            );
            if initial_events {
                first.push(bookmark_line(kind, d.rv, true));
            }
            d.rv
        } else {
            let Ok(from) = rv.parse::<u64>() else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {rv}"),
                );
            };
            if from < d.compacted {
                // The real server answers 200 and sends the error as the first event.
                first.push(event_line(
                    "ERROR",
                    &json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": format!("too old resource version: {from} ({})", d.compacted),
                        "reason": "Expired",
                        "code": 410,
                    }),
                ));
                let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(4);
                tokio::spawn(async move {
                    for line in first {
                        let _ = tx.send(Ok(Bytes::from(line))).await;
                    }
                });
                return stream_response(rx);
            }
            from
        }
    };

    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let store = Arc::clone(&ctx.store);
    let mut stop = ctx.stop.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut ticks = tokio::time::interval(BOOKMARK_EVERY);
        ticks.tick().await;
        for line in first {
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
        let mut cursor = cursor;
        loop {
            // The history this watch stands on was dropped: close it, as the real server
            // closes watches that fell behind; the client's next watch from its last
            // resourceVersion gets 410 Gone.
            let Some((lines, next)) = store.after(kind, &sel, cursor, meta_only) else {
                return;
            };
            cursor = next;
            for line in lines {
                if tx.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
            }
            let bookmark = tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        return;
                    }
                    false
                }
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticks.tick(), if bookmarks => true,
            };
            if bookmark {
                let line = bookmark_line(kind, cursor, false);
                if tx.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
                store.lock().bookmarks += 1;
            }
        }
    });
    stream_response(rx)
}

fn stream_response(rx: futures::channel::mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(rx))
        .expect("response")
}

/// One running instance of the server.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The fake API server on `127.0.0.1:port`; stopped, with everything it holds, on drop.
pub struct FakeApiServer {
    pub port: u16,
    store: Arc<Store>,
    running: Option<Running>,
    /// Bound but not listening while the server is stopped: connections are refused, and no
    /// one else takes the port.
    placeholder: Option<tokio::net::TcpSocket>,
    rt: Option<tokio::runtime::Runtime>,
    /// The network namespace (`/run/netns` name) whose loopback it listens on; `None`: the
    /// test process's.
    netns: Option<String>,
}

impl FakeApiServer {
    /// Starts an empty server on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// Starts an empty server on a free loopback port of the named network namespace
    /// (`ip netns` name): only processes in that namespace reach it, at `127.0.0.1:<port>`.
    pub fn start_in(netns: &str) -> Self {
        Self::start_on(Some(netns.to_string()))
    }

    fn start_on(netns: Option<String>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (changed, _) = tokio::sync::watch::channel(FIRST_RV);
        let store = Arc::new(Store {
            data: Mutex::new(Data {
                rv: FIRST_RV,
                ..Data::default()
            }),
            changed,
        });
        let mut server = Self {
            port: 0,
            store,
            running: None,
            placeholder: None,
            rt: Some(rt),
            netns,
        };
        server.serve();
        server
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime")
    }

    fn serve(&mut self) {
        let _guard = self.rt().enter();
        self.placeholder = None;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut last = None;
        let mut listener = None;
        for _ in 0..50 {
            let bound = self.bind(addr).and_then(|s| s.listen(1024));
            match bound {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let listener = listener
            .unwrap_or_else(|| panic!("fake API server: cannot listen on {addr}: {last:?}"));
        self.port = listener.local_addr().expect("local addr").port();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(Ctx {
            store: Arc::clone(&self.store),
            stop: stop_rx.clone(),
        });
        let app = Router::new().fallback(handle).with_state(ctx);
        let mut shutdown = stop_rx;
        let task = self.rt().spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await;
        });
        self.running = Some(Running { stop, task });
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the server: open watches end (their streams are closed properly), then the
    /// listener closes; the port stays reserved for [`Self::restart`].
    pub fn stop(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        r.stop.send_replace(true);
        let rt = self.rt.as_ref().expect("runtime");
        let mut task = r.task;
        let finished = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_ok()
        });
        if !finished {
            task.abort();
            let _ = rt.block_on(task);
        }
        let _guard = rt.enter();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        self.placeholder = self.bind(addr).ok();
    }

    /// A TCP socket bound to `addr` (address reuse on), in the server's namespace: a socket
    /// belongs to the namespace of the thread that creates it.
    fn bind(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let make = move || {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            Ok(s)
        };
        let Some(ns) = &self.netns else {
            return make();
        };
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let f = std::fs::File::open(&path)?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    make()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Starts the server again on the same port, with the store as it is now.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "the fake API server is running");
        self.serve();
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED` to watchers).
    pub fn apply(&self, kind: Kind, object: Value) {
        let exists = self
            .store
            .lock()
            .objects
            .contains_key(&key_of(kind, &object));
        self.store
            .record(kind, if exists { "MODIFIED" } else { "ADDED" }, object);
    }

    /// Deletes an object (`DELETED` with its last state to watchers); false if there is none.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = (kind, namespace.to_string(), name.to_string());
        let Some(object) = self.store.lock().objects.get(&key).cloned() else {
            return false;
        };
        self.store.record(kind, "DELETED", object);
        true
    }

    /// Forgets the history: watches from an older resourceVersion than the current one get
    /// 410 Gone (as after an etcd compaction or an API server restart with a fresh watch
    /// cache), so that clients must list again.
    pub fn compact(&self) {
        let mut d = self.store.lock();
        d.compacted = d.rv;
        d.history.clear();
    }

    /// Removes an object without an event to any watcher, as if the event had been lost with
    /// the history; use with [`Self::expire_watches`], after which only a relist shows it.
    pub fn forget(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut d = self.store.lock();
        let key = (kind, namespace.to_string(), name.to_string());
        if d.objects.remove(&key).is_none() {
            return false;
        }
        d.rv += 1;
        true
    }

    /// Drops the history up to now (one more write happens meanwhile, elsewhere in the
    /// cluster) and closes every open watch: a client that watches again from its last
    /// resourceVersion gets 410 Gone and must list again.
    pub fn expire_watches(&self) {
        let rv = {
            let mut d = self.store.lock();
            d.rv += 1;
            d.compacted = d.rv;
            d.history.clear();
            d.rv
        };
        self.store.changed.send_replace(rv);
    }

    /// Every request fails with `code` (an API `Status` as the real server sends: 500
    /// `InternalError` from etcd, 503 `ServiceUnavailable`, ...) until `None`. Note that the
    /// kube client retries 429, 503 and 504 by itself (up to 15 times, for minutes) before its
    /// caller sees an error.
    pub fn fail_with(&self, code: Option<u16>) {
        self.store.lock().failing =
            code.map(|c| StatusCode::from_u16(c).expect("HTTP status code"));
    }

    /// Every request line received so far (`GET /api/v1/pods?...`).
    pub fn requests(&self) -> Vec<String> {
        self.store
            .lock()
            .requests
            .iter()
            .map(|r| r.line.clone())
            .collect()
    }

    /// Every request received so far, with who sent it, when, and the bytes of its answer.
    pub fn log(&self) -> Vec<Logged> {
        self.store.lock().requests.clone()
    }

    /// Refuses streaming lists (`sendInitialEvents`) with a 422, as a server with the
    /// WatchList feature gate off, while `refuse` holds.
    pub fn refuse_streaming_lists(&self, refuse: bool) {
        self.store.lock().refuse_streaming = refuse;
    }

    /// BOOKMARK events sent so far on open watches.
    pub fn bookmarks(&self) -> u64 {
        self.store.lock().bookmarks
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig for this server (plain HTTP, no credentials) into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        self.write_kubeconfig_as(dir, "")
    }

    /// The same with a bearer token (`""`: none), by which [`Self::log`] tells clients apart.
    pub fn write_kubeconfig_as(&self, dir: &Path, token: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let user = if token.is_empty() {
            "{}".to_string()
        } else {
            format!("{{token: {token}}}")
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
             current-context: fake\nusers:\n- name: nobody\n  user: {user}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
        self.placeholder = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A Pod as the API server returns it. `ip` None: not started yet (`Pending`, no IP).
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    host_network: bool,
    ip: Option<&str>,
) -> Value {
    let mut spec = json!({
        "nodeName": node,
        "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10" }],
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "default",
    });
    if host_network {
        spec["hostNetwork"] = json!(true);
    }
    let status = match ip {
        Some(ip) => json!({
            "phase": "Running",
            "hostIP": "192.0.2.10",
            "hostIPs": [{ "ip": "192.0.2.10" }],
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": "2025-01-01T00:00:00Z",
        }),
        None => json!({ "phase": "Pending" }),
    };
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": { "app": name },
        },
        "spec": spec,
        "status": status,
    })
}

/// A Node with these pod CIDRs.
pub fn node(name: &str, uid: &str, pod_cidrs: &[&str]) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": uid,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": { "kubernetes.io/hostname": name },
        },
        "spec": {
            "podCIDR": pod_cidrs.first().copied().unwrap_or(""),
            "podCIDRs": pod_cidrs,
        },
        "status": {
            "addresses": [{ "type": "InternalIP", "address": "192.0.2.10" }],
        },
    })
}

static OBJECT_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh object UID in the API's form.
fn object_uid() -> String {
    let n = OBJECT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        u64::from(n)
    )
}

fn object_meta(namespace: &str, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "uid": object_uid(),
        "creationTimestamp": "2025-01-01T00:00:00Z",
    })
}

/// A NetworkPolicy selecting every Pod of its namespace, allowing ingress from the same
/// namespace only (a typical "default deny from elsewhere").
pub fn network_policy(namespace: &str, name: &str) -> Value {
    json!({
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": object_meta(namespace, name),
        "spec": {
            "podSelector": {},
            "ingress": [{ "from": [{ "podSelector": {} }] }],
            "policyTypes": ["Ingress"],
        },
    })
}

/// One port of a Service: (name, port, protocol, targetPort).
pub type SvcPort<'a> = (&'a str, u16, &'a str, u16);

/// A Service as the API server returns it after defaulting. `type_` is `ClusterIP`,
/// `NodePort` or `LoadBalancer` (the last two get node ports and
/// `externalTrafficPolicy: Cluster`); `cluster_ip` `None` is a headless Service.
pub fn service(
    namespace: &str,
    name: &str,
    type_: &str,
    cluster_ip: Option<&str>,
    ports: &[SvcPort<'_>],
) -> Value {
    let ip = cluster_ip.unwrap_or("None");
    let node_ports = type_ == "NodePort" || type_ == "LoadBalancer";
    let ports: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, (pname, port, protocol, target))| {
            let mut p = json!({
                "protocol": protocol,
                "port": port,
                "targetPort": target,
            });
            if !pname.is_empty() {
                p["name"] = json!(pname);
            }
            if node_ports {
                p["nodePort"] = json!(30000 + i);
            }
            p
        })
        .collect();
    let mut spec = json!({
        "ports": ports,
        "selector": { "app": name },
        "clusterIP": ip,
        "clusterIPs": [ip],
        "type": type_,
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    });
    if node_ports {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    let status = if type_ == "LoadBalancer" {
        json!({ "loadBalancer": { "ingress": [{ "ip": "192.0.2.200", "ipMode": "VIP" }] } })
    } else {
        json!({ "loadBalancer": {} })
    };
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": object_meta(namespace, name),
        "spec": spec,
        "status": status,
    })
}

/// One EndpointSlice of a Service (`discovery.k8s.io/v1`, IPv4), as the EndpointSlice
/// controller writes it: `endpoints` are `(ip, nodeName, ready)`, `ports`
/// `(name, port, protocol)`. A Service with more than 100 endpoints (the controller's
/// default) or 1,000 (its maximum) has several, named `<service>-<suffix>`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    suffix: &str,
    endpoints: &[(&str, &str, bool)],
    ports: &[(&str, u16, &str)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            json!({
                "addresses": [ip],
                "conditions": { "ready": ready, "serving": ready, "terminating": false },
                "nodeName": node,
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": format!("{service}-{}", ip.replace('.', "-")),
                    "uid": object_uid(),
                },
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(pname, port, protocol)| json!({ "name": pname, "port": port, "protocol": protocol }))
        .collect();
    let mut meta = object_meta(namespace, &format!("{service}-{suffix}"));
    meta["labels"] = json!({
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    });
    meta["generateName"] = json!(format!("{service}-"));
    meta["ownerReferences"] = json!([{
        "apiVersion": "v1",
        "kind": "Service",
        "name": service,
        "uid": object_uid(),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// A ConfigMap with these `data` entries.
pub fn config_map(namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": object_meta(namespace, name),
        "data": data,
    })
}
