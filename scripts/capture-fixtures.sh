#!/usr/bin/env bash
# Captures tests/fixtures/ from this machine's kernel: builds a scene in two network namespaces
# (a listener with a full accept queue, connections with bytes queued both ways, a TIME-WAIT
# socket, IPv4 and IPv6, a pfifo qdisc with traffic, neighbours), then records the raw data the
# probes read together with what the standard tools say about the same namespace at the same
# moment (tools/*). The golden tests compare the probes' parse of the raw data with the tools.
#
# Usage (root): scripts/capture-fixtures.sh [OUT_DIR]   (default tests/fixtures)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-tests/fixtures}
A=fxcap$$; B=fxpeer$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$A"; ip netns add "$B"
ip link add eth0 netns "$A" type veth peer name eth0 netns "$B"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
ip -n "$A" addr add 10.204.0.1/30 dev eth0; ip -n "$B" addr add 10.204.0.2/30 dev eth0
ip -n "$A" addr add fd00:204::1/64 dev eth0 nodad; ip -n "$B" addr add fd00:204::2/64 dev eth0 nodad
ip -n "$A" link add eth9 type veth peer name eth9p   # a second device, idle
tc -n "$A" qdisc add dev eth0 root pfifo limit 1000
ip -n "$A" neigh add 10.204.0.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent

py() { ip netns exec "$1" python3 -c "$2" & pids+=($!); }
# In A: a listener that never accepts (accept queue 3), and a server that accepts, never reads.
py "$A" 'import socket,time
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(("10.204.0.1",8080)); l.listen(16)
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("10.204.0.1",9090)); s.listen(16)
l6=socket.socket(socket.AF_INET6); l6.bind(("fd00:204::1",8086)); l6.listen(16)
f=socket.socket(); f.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); f.bind(("10.204.0.1",8081)); f.listen(1)
c,_=s.accept()
time.sleep(600)'
sleep 0.5
# In B: three clients of the full listener, one IPv6 one, one writer that fills both queues.
py "$B" 'import socket,time
cs=[socket.create_connection(("10.204.0.1",8080)) for _ in range(3)]
# Four to the listener of backlog 1: two fill its queue, the SYNs of the others are dropped.
fs=[socket.socket() for _ in range(4)]
for f in fs: f.setblocking(False); f.connect_ex(("10.204.0.1",8081))
c6=socket.create_connection(("fd00:204::1",8086))
w=socket.create_connection(("10.204.0.1",9090)); w.setblocking(False)
try:
    while True: w.send(b"x"*65536)
except BlockingIOError: pass
time.sleep(600)'
# A server in B, closed actively from A, leaves a TIME-WAIT socket in A; and a server in B
# that never reads.
py "$B" 'import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("10.204.0.2",7070)); s.listen(4)
r=socket.socket(); r.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); r.bind(("10.204.0.2",9091)); r.listen(4)
c,_=s.accept()
while c.recv(10): pass
c.close()
k,_=r.accept()
time.sleep(600)'
sleep 0.5
ip netns exec "$A" python3 -c 'import socket; c=socket.create_connection(("10.204.0.2",7070)); c.send(b"hi"); c.close()'
# In A: a writer to a server in B that never reads, so A has bytes in a send queue.
py "$A" 'import socket,time
w=socket.create_connection(("10.204.0.2",9091)); w.setblocking(False)
try:
    while True: w.send(b"y"*65536)
except BlockingIOError: pass
time.sleep(600)'
sleep 1

cargo build -q --example capture_fixtures
bin=target/debug/examples/capture_fixtures
for attempt in 1 2 3 4 5; do
  before=$(ip netns exec "$A" nstat -asz --json)
  links_before=$(ip -n "$A" -s -s -j link show)
  listen_before=$(ip netns exec "$A" ss -Hltnm)
  "$bin" "$out" "/run/netns/$A"
  after=$(ip netns exec "$A" nstat -asz --json)
  links_after=$(ip -n "$A" -s -s -j link show)
  listen_after=$(ip netns exec "$A" ss -Hltnm)
  if [ "$before" = "$after" ] && [ "$links_before" = "$links_after" ] \
    && [ "$listen_before" = "$listen_after" ]; then
    printf '%s\n' "$listen_after" > "$out/listeners/ss.txt"
    mkdir -p "$out/tools"
    printf '%s\n' "$after" > "$out/tools/nstat.json"
    printf '%s\n' "$links_after" > "$out/tools/ip-link.json"
    ip netns exec "$A" cat /proc/net/sockstat > "$out/tools/sockstat"
    ip netns exec "$A" sysctl -n net.ipv4.tcp_ehash_entries > "$out/tools/sysctl-tcp-ehash-entries.txt"
    tc -n "$A" -s -j qdisc show > "$out/tools/tc-qdisc.json"
    ip -n "$A" -4 -j neigh show > "$out/tools/ip-neigh.json"
    ip netns exec "$A" ss -tanH state established > "$out/tools/ss-established.txt"
    ip netns exec "$A" ss -tanH state time-wait > "$out/tools/ss-time-wait.txt"
    ip netns exec "$A" ss -tlnH > "$out/tools/ss-listen.txt"
    conntrack -S > "$out/tools/conntrack-S.txt" 2>/dev/null || true
    echo "captured into $out (attempt $attempt)"
    exit 0
  fi
  sleep 1
done
echo "the namespace never stood still for a capture" >&2
exit 1
