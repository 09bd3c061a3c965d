#!/usr/bin/env bash
# Checks deploy/ (make manifests; part of make test). Offline: no cluster is needed.
#
#  1. `kubectl kustomize` renders deploy/ and deploy/overlays/servicemonitor/, with no warning,
#     and the overlay is the base plus one ServiceMonitor.
#  2. Every rendered object passes kubernetes-validate's strict schema validation (unknown fields
#     fail) for each Kubernetes version in KUBE_VERSIONS. The ServiceMonitor is a CRD that
#     kubernetes-validate has no schema for: it is checked structurally instead (apiVersion,
#     kind, spec.selector matching the Service, spec.endpoints[].port naming the Service's port).
#  3. Policy of the DaemonSet: no privileged container, capabilities dropped to ALL plus a named
#     list (each of them, and each hostPath, described in docs/deploy.md), read-only root
#     filesystem, no privilege escalation, a seccomp profile, probes on /healthz and /readyz on
#     the metrics port, NODE_NAME from spec.nodeName, every volumeMount backed by a volume and
#     every volume mounted, hostPaths read-only; RBAC exactly what the agent watches (list,
#     watch; in kube-system the ip-masq-agent ConfigMap by name); the Service and the
#     ServiceAccount wired to the DaemonSet.
#  4. The binary itself: every flag in the container's args is one that `net-exporter --help`
#     lists, and the agent starts (briefly, on this machine, listening on 127.0.0.1 only) with
#     those args, the config file from the rendered ConfigMap and the hostPaths as the paths.
#
# Needs kubectl and .cache/venv (kubernetes-validate, PyYAML): scripts/install-deps.sh installs
# both. KUBECTL overrides the kubectl used; NET_EXPORTER_BIN a prebuilt binary (else cargo builds
# target/debug/net-exporter, a no-op when it is up to date).
set -euo pipefail
cd "$(dirname "$0")/.."

# Kubernetes versions whose API schemas (bundled by kubernetes-validate) the objects must pass.
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30.0 1.37.0"}
KUBECTL=${KUBECTL:-kubectl}
py=.cache/venv/bin/python

die() {
  echo "check-manifests: FAIL: $*" >&2
  exit 1
}

command -v "$KUBECTL" >/dev/null 2>&1 || die "$KUBECTL not found: run scripts/install-deps.sh (or make deps)"
"$py" -c 'import kubernetes_validate, yaml' 2>/dev/null \
  || die ".cache/venv with kubernetes-validate and PyYAML is missing: run scripts/install-deps.sh (or make deps)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Render. kubectl before 1.21 embeds kustomize v2.0.3 (Debian's kubernetes-client, the
# fallback of install-deps.sh), which takes directories only under the since-deprecated `bases:`
# field; for it, a copy of deploy/ gets its directory entries moved from `resources:` to `bases:`
# (the same meaning), so that newer kustomize never prints the deprecation warning.
minor=$("$KUBECTL" version --client -o json 2>/dev/null \
  | "$py" -c 'import json, re, sys; print(re.match(r"\d+", json.load(sys.stdin)["clientVersion"]["minor"]).group())' \
  2>/dev/null) || minor=99
src=deploy
if [ "$minor" -lt 21 ]; then
  cp -r deploy "$tmp/deploy"
  "$py" - "$tmp/deploy" <<'PY'
import os, sys, yaml
for d, _, files in os.walk(sys.argv[1]):
    if "kustomization.yaml" in files:
        p = os.path.join(d, "kustomization.yaml")
        with open(p) as f:
            k = yaml.safe_load(f)
        res = k.get("resources") or []
        dirs = [r for r in res if os.path.isdir(os.path.join(d, r))]
        if dirs:
            k["resources"] = [r for r in res if r not in dirs]
            k["bases"] = (k.get("bases") or []) + dirs
            with open(p, "w") as f:
                yaml.safe_dump(k, f)
PY
  src="$tmp/deploy"
fi
render() { # DIR OUT
  "$KUBECTL" kustomize "$src/$1" >"$tmp/$2" 2>"$tmp/$2.err" \
    || die "kubectl kustomize deploy/$1 failed: $(cat "$tmp/$2.err")"
  [ ! -s "$tmp/$2.err" ] || die "kubectl kustomize deploy/$1 printed warnings: $(cat "$tmp/$2.err")"
}
render "" base.yaml
render overlays/servicemonitor/ servicemonitor.yaml

# 4 (first half). The flags the binary accepts, from the binary built from this tree.
if [ -n "${NET_EXPORTER_BIN:-}" ]; then
  bin=$NET_EXPORTER_BIN
elif command -v cargo >/dev/null 2>&1; then
  cargo build -q --bin net-exporter || die "cargo build --bin net-exporter failed (needed to check the container's flags)"
  bin=target/debug/net-exporter
else
  bin=target/debug/net-exporter
fi
[ -x "$bin" ] || die "no net-exporter binary at $bin"
"$bin" --help >"$tmp/help.txt" 2>&1 || die "$bin --help failed: $(cat "$tmp/help.txt")"

# 2-4. Everything else, in Python.
"$py" - "$tmp/base.yaml" "$tmp/servicemonitor.yaml" "$tmp/help.txt" "$bin" "$KUBE_VERSIONS" "$tmp" <<'PY'
import os, re, select, signal, subprocess, sys, time

import kubernetes_validate as kv
import kubernetes_validate.utils as kvu
import yaml

base_path, overlay_path, help_path, binary, versions, tmp = sys.argv[1:7]
versions = versions.split()
problems = []


def fail(msg):
    problems.append(msg)


class Fatal(Exception):
    pass


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(o):
    md = o.get("metadata") or {}
    ns = md.get("namespace")
    return f"{o.get('kind')} {ns + '/' if ns else ''}{md.get('name')}"


base = load(base_path)
overlay = load(overlay_path)
SM = ("monitoring.coreos.com/v1", "ServiceMonitor")
# CRDs that kubernetes-validate has no schema for; each is checked structurally below.
CRDS = {SM}


def is_crd(o):
    return (o.get("apiVersion"), o.get("kind")) in CRDS


# 2. Schemas, strict: an unknown or misplaced field fails.
validated = 0
for where, docs in (("deploy/", base), ("deploy/overlays/servicemonitor/", overlay)):
    for o in docs:
        if is_crd(o):
            continue
        for v in versions:
            try:
                kv.validate(o, v, strict=True)
                validated += 1
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                fail(f"{where}: {ident(o)} does not validate against Kubernetes {v} (strict): {path}: {e.message}")
            except kv.SchemaNotFoundError:
                fail(f"{where}: {ident(o)}: Kubernetes {v} has no {o.get('apiVersion')} {o.get('kind')} (removed or misspelt API?)")
            except kvu.VersionNotSupportedError:
                fail(f"kubernetes-validate {kv.__version__} does not bundle Kubernetes {v}: change KUBE_VERSIONS")

# 1 (end). The overlay is the base plus exactly one ServiceMonitor.
key = lambda o: (o.get("kind"), (o.get("metadata") or {}).get("namespace") or "", (o.get("metadata") or {}).get("name"))
if sorted((o for o in overlay if not is_crd(o)), key=key) != sorted(base, key=key):
    fail("deploy/overlays/servicemonitor/ renders the base's objects differently from deploy/")
sms = [o for o in overlay if (o.get("apiVersion"), o.get("kind")) == SM]
if len(sms) != 1:
    fail(f"deploy/overlays/servicemonitor/ renders {len(sms)} ServiceMonitor objects, expected 1")


def one(kind):
    xs = [o for o in base if o.get("kind") == kind]
    if len(xs) != 1:
        raise Fatal(f"deploy/ renders {len(xs)} {kind} objects, expected 1")
    return xs[0]


def dig(o, *path, default=None):
    for p in path:
        if isinstance(o, dict) and p in o:
            o = o[p]
        elif isinstance(o, list) and isinstance(p, int) and p < len(o):
            o = o[p]
        else:
            return default
    return o


def check_all():
    ns, sa, cr, crb, svc, ds = (one(k) for k in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"))
    nsname = ns["metadata"]["name"]
    try:
        with open("docs/deploy.md") as f:
            deploy_md = f.read()
    except OSError as e:
        raise Fatal(f"docs/deploy.md, which must describe every capability and hostPath: {e}")

    # Namespaces, labels, annotations.
    for o in base + sms:
        md = o.get("metadata") or {}
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding") and md.get("namespace") != nsname:
            fail(f"{ident(o)} is not in the namespace {nsname}")
        labels = md.get("labels") or {}
        for l in ("app.kubernetes.io/name", "app.kubernetes.io/part-of"):
            if l not in labels:
                fail(f"{ident(o)} lacks the label {l}")
        for a in list((md.get("annotations") or {})) + list(dig(o, "spec", "template", "metadata", "annotations", default={}) or {}):
            if a.startswith("prometheus.io/"):
                fail(f"{ident(o)} has the scrape annotation {a}: discovery is by the Service (and ServiceMonitor)")

    # RBAC: exactly what the agent watches (list and watch), bound to its account; the
    # ip-masq-agent's ConfigMap by name in kube-system, nothing else there.
    watched = {("", "pods"), ("", "nodes"), ("", "services"),
               ("discovery.k8s.io", "endpointslices"), ("networking.k8s.io", "networkpolicies")}

    def grants(role):
        out = set()
        for r in role.get("rules") or []:
            if set(r.get("verbs") or []) != {"list", "watch"}:
                fail(f"{ident(role)} grants verbs {sorted(r.get('verbs') or [])}: exactly list, watch")
            if r.get("nonResourceURLs"):
                fail(f"{ident(role)} has nonResourceURLs, which the agent does not use")
            for g in r.get("apiGroups") or []:
                for res in r.get("resources") or []:
                    out.add((g, res, tuple(r.get("resourceNames") or [])))
        return out

    granted = grants(cr)
    if granted != {(g, res, ()) for g, res in watched}:
        fail(f"{ident(cr)} grants {sorted(granted)}; the agent watches exactly {sorted(watched)} (list, watch; no resourceNames)")
    role, rb = one("Role"), one("RoleBinding")
    if role["metadata"].get("namespace") != "kube-system" or rb["metadata"].get("namespace") != "kube-system":
        fail(f"{ident(role)} and {ident(rb)} must be in kube-system, where the ip-masq-agent's ConfigMap is")
    if grants(role) != {("", "configmaps", ("ip-masq-agent",))}:
        fail(f"{ident(role)} grants {sorted(grants(role))}; the agent watches only configmaps/ip-masq-agent there")
    for binding, ref in ((crb, cr), (rb, role)):
        if dig(binding, "roleRef", "kind") != ref["kind"] or dig(binding, "roleRef", "name") != ref["metadata"]["name"]:
            fail(f"{ident(binding)} does not refer to {ident(ref)}")
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa["metadata"]["name"]
                   and s.get("namespace") == sa["metadata"]["namespace"] for s in binding.get("subjects") or []):
            fail(f"{ident(binding)} does not bind {ident(sa)}")

    # The DaemonSet.
    spec = ds["spec"]
    tpl = spec["template"]
    pod = tpl["spec"]
    tpl_labels = dig(tpl, "metadata", "labels", default={}) or {}
    selector = dig(spec, "selector", "matchLabels", default={}) or {}
    if not selector or any(tpl_labels.get(k) != v for k, v in selector.items()):
        fail(f"{ident(ds)}: spec.selector does not match the Pod template's labels")
    for l in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"):
        if l not in tpl_labels:
            fail(f"{ident(ds)}: the Pod template lacks the label {l}")
    if pod.get("serviceAccountName") != sa["metadata"]["name"]:
        fail(f"{ident(ds)} does not run as {ident(sa)}")
    for field, want in (("hostNetwork", True), ("hostPID", True), ("dnsPolicy", "ClusterFirstWithHostNet"),
                        ("priorityClassName", "system-node-critical")):
        if pod.get(field) != want:
            fail(f"{ident(ds)}: spec.template.spec.{field} is {pod.get(field)!r}, expected {want!r}")
    if not any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect") for t in pod.get("tolerations") or []):
        fail(f"{ident(ds)} does not tolerate every taint (a toleration with operator: Exists only)")
    if dig(spec, "updateStrategy", "type") != "RollingUpdate":
        fail(f"{ident(ds)}: updateStrategy is not RollingUpdate")

    every = (pod.get("containers") or []) + (pod.get("initContainers") or []) + (pod.get("ephemeralContainers") or [])
    for c in every:
        if dig(c, "securityContext", "privileged") is True:
            fail(f"{ident(ds)}: container {c.get('name')} is privileged: use capabilities instead")
    if len(pod.get("containers") or []) != 1:
        raise Fatal(f"{ident(ds)} has {len(pod.get('containers') or [])} containers, expected 1")
    c = pod["containers"][0]
    sc = c.get("securityContext") or {}
    drop = dig(sc, "capabilities", "drop", default=[]) or []
    add = dig(sc, "capabilities", "add", default=[]) or []
    if "ALL" not in drop:
        fail(f"{ident(ds)}: the container does not drop ALL capabilities")
    known = {"AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "CHOWN",
             "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
             "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE",
             "NET_BROADCAST", "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG",
             "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE",
             "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM"}
    for cap in add:
        if cap.startswith("CAP_"):
            fail(f"{ident(ds)}: capability {cap}: write it without CAP_ (the API refuses CAP_SYS_ADMIN "
                 "with allowPrivilegeEscalation: false, and Kubernetes documents the short names)")
        elif cap not in known:
            fail(f"{ident(ds)}: {cap} is not a Linux capability")
        if f"`{cap}`" not in deploy_md:
            fail(f"{ident(ds)} adds {cap}, which docs/deploy.md does not describe (as `{cap}`)")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(f"{ident(ds)}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(f"{ident(ds)}: allowPrivilegeEscalation is not false")
    seccomp = dig(sc, "seccompProfile", "type") or dig(pod, "securityContext", "seccompProfile", "type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        fail(f"{ident(ds)}: seccompProfile is {seccomp!r}: use RuntimeDefault (see the comment in daemonset.yaml)")

    ports = {p.get("name"): p for p in c.get("ports") or []}
    mport = ports.get("metrics")
    if not mport or mport.get("containerPort") != 9102:
        fail(f"{ident(ds)}: no container port named metrics on 9102")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = dig(c, probe, "httpGet") or {}
        if get.get("path") != path or get.get("port") not in ("metrics", 9102):
            fail(f"{ident(ds)}: {probe} is not an HTTP GET of {path} on the metrics port")
    env = {e.get("name"): e for e in c.get("env") or []}
    if dig(env.get("NODE_NAME"), "valueFrom", "fieldRef", "fieldPath") != "spec.nodeName":
        fail(f"{ident(ds)}: NODE_NAME does not come from the downward API's spec.nodeName")
    res = c.get("resources") or {}
    if not dig(res, "requests", "cpu") or not dig(res, "requests", "memory") or not dig(res, "limits", "memory"):
        fail(f"{ident(ds)}: set CPU and memory requests and a memory limit")

    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = c.get("volumeMounts") or []
    used = set()
    for m in mounts:
        v = volumes.get(m.get("name"))
        if v is None:
            fail(f"{ident(ds)}: volumeMount {m.get('name')} ({m.get('mountPath')}) has no volume")
            continue
        used.add(m["name"])
        if "hostPath" in v:
            if m.get("readOnly") is not True:
                fail(f"{ident(ds)}: the hostPath {v['hostPath']['path']} is not mounted readOnly")
            if f"`{v['hostPath']['path']}`" not in deploy_md:
                fail(f"{ident(ds)} mounts the hostPath {v['hostPath']['path']}, which docs/deploy.md does not describe")
    for name in set(volumes) - used:
        fail(f"{ident(ds)}: volume {name} is mounted nowhere")
    if len({m.get("mountPath") for m in mounts}) != len(mounts):
        fail(f"{ident(ds)}: two volumeMounts share a mountPath")

    # The Service selects the agents and names their port.
    if dig(svc, "spec", "clusterIP") != "None":
        fail(f"{ident(svc)} is not headless (clusterIP: None)")
    ssel = dig(svc, "spec", "selector", default={}) or {}
    if not ssel or any(tpl_labels.get(k) != v for k, v in ssel.items()):
        fail(f"{ident(svc)}: its selector does not select the DaemonSet's Pods")
    sports = {p.get("name"): p for p in dig(svc, "spec", "ports", default=[]) or []}
    sp = sports.get("metrics")
    if not sp or sp.get("port") != 9102 or sp.get("targetPort") not in ("metrics", 9102):
        fail(f"{ident(svc)}: no port named metrics on 9102 targeting the container's metrics port")

    # The ServiceMonitor (a CRD: structural check, see the top of this script).
    for sm in sms:
        sspec = sm.get("spec") or {}
        known_spec = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                      "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                      "keepDroppedTargets", "attachMetadata", "scrapeClass", "bodySizeLimit"}
        for k in set(sspec) - known_spec:
            fail(f"{ident(sm)}: unexpected field spec.{k}")
        msel = dig(sspec, "selector", "matchLabels", default={}) or {}
        slabels = dig(svc, "metadata", "labels", default={}) or {}
        if not msel or any(slabels.get(k) != v for k, v in msel.items()):
            fail(f"{ident(sm)}: spec.selector.matchLabels does not select {ident(svc)}")
        nsel = sspec.get("namespaceSelector")
        svc_ns = svc["metadata"]["namespace"]
        if nsel is None:
            if sm["metadata"].get("namespace") != svc_ns:
                fail(f"{ident(sm)} is not in {svc_ns} and has no namespaceSelector")
        elif not nsel.get("any") and svc_ns not in (nsel.get("matchNames") or []):
            fail(f"{ident(sm)}: namespaceSelector does not include {svc_ns}")
        eps = sspec.get("endpoints") or []
        if not eps:
            fail(f"{ident(sm)}: spec.endpoints is empty")
        known_ep = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels",
                    "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig", "authorization",
                    "bearerTokenSecret", "followRedirects", "enableHttp2", "filterRunning"}
        for i, ep in enumerate(eps):
            for k in set(ep) - known_ep:
                fail(f"{ident(sm)}: unexpected field spec.endpoints[{i}].{k}")
            if ep.get("port") not in sports:
                fail(f"{ident(sm)}: spec.endpoints[{i}].port {ep.get('port')!r} is not a port name of {ident(svc)}")
            if ep.get("path", "/metrics") != "/metrics":
                fail(f"{ident(sm)}: spec.endpoints[{i}].path is not /metrics")
            if ep.get("interval") is not None and not re.fullmatch(r"(\d+(ms|s|m|h))+", str(ep["interval"])):
                fail(f"{ident(sm)}: spec.endpoints[{i}].interval {ep['interval']!r} is not a duration")
            if ep.get("honorLabels") is not True:
                fail(f"{ident(sm)}: spec.endpoints[{i}].honorLabels is not true (the agent's k8s_node and Pod labels must be kept)")

    # 4. Flags: each arg is --name=value with a name that `net-exporter --help` lists.
    with open(help_path) as f:
        accepted = set(re.findall(r"(?m)^\s+(?:-\w, )?(--[A-Za-z0-9][\w.-]*)", f.read()))
    if not accepted:
        raise Fatal(f"found no flags in `{binary} --help`")
    if c.get("command"):
        fail(f"{ident(ds)}: the container sets command; set args only (the image's entrypoint is the agent)")
    args = c.get("args") or []
    flags = {}
    for a in args:
        name, eq, value = a.partition("=")
        if not name.startswith("--") or not eq:
            fail(f"{ident(ds)}: argument {a!r} is not of the form --flag=value")
        elif name not in accepted:
            fail(f"{ident(ds)}: flag {name} is not one that {binary} accepts ({', '.join(sorted(accepted))})")
        else:
            flags[name] = value

    # 4. The agent starts with these args, its config file and the hostPaths.
    cfg = flags.get("--config.file")
    if not cfg:
        fail(f"{ident(ds)}: no --config.file argument")
        return

    def host_path(path):
        """Where a path of the container is on this machine (a hostPath or a ConfigMap file)."""
        best = max((m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")),
                   key=lambda m: len(m["mountPath"]), default=None)
        if best is None or best["name"] not in volumes:
            return path
        v = volumes[best["name"]]
        rest = path[len(best["mountPath"]):].lstrip("/")
        if "hostPath" in v:
            return os.path.join(v["hostPath"]["path"], rest) if rest else v["hostPath"]["path"]
        if "configMap" in v:
            cms = [o for o in base if o["kind"] == "ConfigMap" and o["metadata"]["name"] == v["configMap"]["name"]]
            if len(cms) != 1:
                raise Fatal(f"{ident(ds)}: volume {best['name']} refers to ConfigMap {v['configMap']['name']}, which deploy/ does not render")
            d = os.path.join(tmp, "configmap-" + best["name"])
            os.makedirs(d, exist_ok=True)
            for k, text in (cms[0].get("data") or {}).items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(text)
            return os.path.join(d, rest)
        return path

    cfg_host = host_path(cfg)
    if not os.path.isfile(cfg_host):
        fail(f"{ident(ds)}: --config.file={cfg} is not a file of a mounted ConfigMap")
        return
    run_args = [f"{n}={host_path(v) if v.startswith('/') else v}" for n, v in flags.items()
                if n not in ("--web.listen-address", "--log.level")]
    run_args += ["--web.listen-address=127.0.0.1:0", "--log.level=info"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_NAME": "check-manifests"}
    p = subprocess.Popen([binary] + run_args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    out = b""
    started = False
    deadline = time.monotonic() + 30
    fd = p.stderr.fileno()
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:  # the agent exited
                    break
                out += chunk
                if b"net-exporter starting" in out:
                    started = True
                    break
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rest = p.communicate(timeout=10)[1] or b""
        except subprocess.TimeoutExpired:
            p.kill()
            rest = p.communicate()[1] or b""
        out += rest
    if not started:
        text = out.decode(errors="replace").strip()
        fail(f"net-exporter did not start with the DaemonSet's args {run_args} "
             f"(exit status {p.returncode}): {text[-2000:] or 'no output'}")


try:
    check_all()
except Fatal as e:
    fail(str(e))

if problems:
    for m in problems:
        print(f"check-manifests: FAIL: {m}", file=sys.stderr)
    sys.exit(1)
print(f"check-manifests: OK: deploy/ ({len(base)} objects) and deploy/overlays/servicemonitor/ render; "
      f"{validated} object validations against Kubernetes {', '.join(versions)} (strict) pass; "
      "ServiceMonitor checked structurally; DaemonSet policy, RBAC, flags and config accepted by net-exporter")
PY
