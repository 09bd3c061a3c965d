#!/usr/bin/env bash
# Builds the agent's container image from Containerfile with podman: `make image`
# (IMAGE=net-exporter:dev by default). The release binary must be built (make does it).
#
# Offline as on the machines CI runs on (no container registry reachable): the Containerfile's
# base, docker.io/library/debian:bookworm-slim, is made here when podman does not have it, by
# debootstrap from the apt mirror this machine is configured with, and tagged under that same
# name, so the file users build online is the file built and tested here.
#
# Two quirks of machines of this kind are handled first (docs/deploy.md, "Building the image"):
# - the sandbox lacks CAP_SYS_RESOURCE, so the runtime's default ulimits (above the current
#   ones) cannot be set: a containers.conf of our own (target/image/containers.conf, passed as
#   CONTAINERS_CONF) sets them at or below what podman may set;
# - crun refuses a hybrid cgroup layout whose cgroup v2 hierarchy has controllers: each one there
#   (hugetlb here) is mounted as a v1 hierarchy of its own instead.
#
# --or-skip (make test): where no container runtime can be had, say why in
# target/image/unavailable and exit 0; integration/image.rs reads that file and says it skipped.
set -euo pipefail
# A failure of this script itself is an error even with --or-skip: only a machine that cannot
# have a container runtime is a reason to skip.
trap 'echo "image: scripts/image.sh failed at line $LINENO (status $?)" >&2' ERR
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-net-exporter:dev}
BASE=docker.io/library/debian:bookworm-slim
STATE=target/image
OR_SKIP=0
[ "${1:-}" = "--or-skip" ] && OR_SKIP=1
mkdir -p "$STATE"
rm -f "$STATE/unavailable"

cannot() {
  if [ "$OR_SKIP" = 1 ]; then
    echo "$*" > "$STATE/unavailable"
    echo "image: not built here: $*" >&2
    exit 0
  fi
  echo "image: $*" >&2
  exit 1
}

# 1. The tools.
need=()
for t in podman crun debootstrap; do command -v "$t" >/dev/null 2>&1 || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || cannot "missing ${need[*]}: run as root or install them"
  echo "image: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || cannot "apt-get could not install ${need[*]}"
fi

# 2a. cgroups: crun wants cgroup v2 alone or v1 alone; move v2's controllers to v1 hierarchies.
if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
  for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" 2>/dev/null ||
      cannot "crun refuses this hybrid cgroup layout, and the $c controller could not be moved off cgroup v2"
    echo "image: cgroup controller $c moved from cgroup v2 to a v1 hierarchy (crun refuses hybrid layouts)" >&2
  done
fi

# 2b. ulimits no higher than this process may set: nofile as now; nproc as now, halved until the
# runtime can set it (podman itself runs with a lower one than its shell on some machines).
conf="$STATE/containers.conf"
export CONTAINERS_CONF="$PWD/$conf"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=4194304
write_conf() {
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
    "$nofile" "$nofile" "$nproc" "$nproc" > "$conf"
}
write_conf

# 3. The base, made locally when podman lacks it.
if ! podman image exists "$BASE"; then
  mirror=$(
    { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
      grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
    } | grep -v -- '-security' | head -1 || true
  )
  [ -n "$mirror" ] || cannot "no Debian mirror in the apt sources to make $BASE from"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "image: making $BASE with debootstrap (minbase, bookworm) from the machine's apt mirror" >&2
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1 ||
    cannot "debootstrap failed (see $STATE/debootstrap.log)"
  # What the official image's "slim" variant (debuerreotype) leaves out: documentation, manuals
  # and translations, now and in what apt installs later; apt's lists and package caches.
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    'path-exclude /usr/share/lintian/*' > "$root/etc/dpkg/dpkg.cfg.d/docker"
  printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' > "$root/etc/apt/apt.conf.d/docker-clean"
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - "$BASE" >/dev/null ||
    cannot "podman import of the base failed"
fi

for _ in 1 2 3 4 5 6; do
  out=$(podman run --rm --network=host "$BASE" true 2>&1) && break
  case "$out" in
    *setrlimit*RLIMIT_NPROC*) nproc=$((nproc / 2)); write_conf ;;
    *setrlimit*RLIMIT_NOFILE*) nofile=$((nofile / 2)); write_conf ;;
    *) cannot "podman cannot run a container here: $out" ;;
  esac
done
podman run --rm --network=host "$BASE" true >/dev/null 2>&1 ||
  cannot "podman cannot run a container here, even with lower ulimits"

# 4. The image.
[ -x target/release/net-exporter ] || cannot "target/release/net-exporter is not built (make release)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
podman build --network=host --build-arg "VERSION=$version" -f Containerfile -t "$IMAGE" . \
  >"$STATE/build.log" 2>&1 ||
  cannot "podman build failed (see $STATE/build.log)"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "image: built $IMAGE ($((size / 1024 / 1024)) MiB)" >&2
echo "$IMAGE" > "$STATE/built"
