#!/usr/bin/env bash
# Installs the Debian packages that the tests and benchmarks use, when they are missing.
# Idempotent and quiet when everything is there already.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip         || need+=(iproute2)
have nstat      || need+=(iproute2)
have conntrack  || need+=(conntrack)
have iptables   || need+=(iptables)
have nft        || need+=(nftables)
have prometheus || need+=(prometheus)
have promtool   || need+=(prometheus)
have curl       || need+=(curl)
# integration/web.rs makes its TLS certificates with openssl.
have openssl    || need+=(openssl)
have bc         || need+=(bc)
have python3    || need+=(python3)
have setpriv    || need+=(util-linux)
# integration/harness.rs asks bpftool whether this kernel loads the socket-summary programs
# (some machines of this kind refuse map iterators), independently of the agent.
have bpftool    || need+=(bpftool)
# integration/dns.rs starts a real resolver; dnsmasq-base is the binary without the service.
have dnsmasq    || need+=(dnsmasq-base)
have clang      || need+=(clang)
have llvm-strip || need+=(llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# scripts/check-manifests.sh (make manifests): `kubectl kustomize` renders deploy/. The machine's
# image has kubectl; Debian's kubernetes-client (1.20, an old kustomize) is the fallback.
have kubectl    || need+=(kubernetes-client)
# ... and a Python venv (below) for kubernetes-validate; Debian's python3 needs python3-venv.
{ have python3 && python3 -c 'import venv, ensurepip' 2>/dev/null; } || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: no node-exporter and no service start for prometheus.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The conntrack statistics exist once the module is loaded (or when it is built in, as on
# kernels without a modules directory, where there is nothing to load and maybe no modprobe).
if [ ! -e /proc/net/stat/nf_conntrack ] && have modprobe; then
  modprobe nf_conntrack 2>/dev/null || true
fi
for c in cargo-clippy rustfmt; do
  have "$c" || { echo "install-deps: the Rust toolchain lacks $c (rustup component add clippy rustfmt)" >&2; exit 1; }
done

# The tracepoint attach modes of the drop counter read tracefs.
if [ ! -e /sys/kernel/tracing/events ] && [ "$(id -u)" -eq 0 ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

# The Python tools of scripts/check-manifests.sh, in a venv of the repository (.cache/, ignored
# by git): kubernetes-validate (offline JSON schemas of the Kubernetes API) and PyYAML. Rebuilt
# only when missing, broken or of other versions than these.
MANIFEST_TOOLS="kubernetes-validate==1.37.0 PyYAML==6.0.3"
venv="$(cd "$(dirname "$0")/.." && pwd)/.cache/venv"
if [ "$(cat "$venv/.tools" 2>/dev/null)" != "$MANIFEST_TOOLS" ] \
   || ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "install-deps: creating $venv with $MANIFEST_TOOLS" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $MANIFEST_TOOLS
  echo "$MANIFEST_TOOLS" > "$venv/.tools"
fi
