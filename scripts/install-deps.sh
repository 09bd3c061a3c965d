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
have python3    || need+=(python3)
have setpriv    || need+=(util-linux)
have clang      || need+=(clang)
have llvm-strip || need+=(llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)

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

# The conntrack statistics exist once the module is loaded.
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
