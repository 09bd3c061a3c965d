#!/usr/bin/env bash
# make soak: SOAK_NAMESPACES (100) namespaces with traffic for SOAK_SECONDS (600), the agent
# scraped every second. Prints, every 30 s, the agent's RSS, its peak RSS since start (VmHWM)
# and its CPU per scrape over the last 30 s, so that growth shows as a trend.
# Needs root; removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SOAK_NAMESPACES:-100}
SECS=${SOAK_SECONDS:-600}
PORT=${SOAK_PORT:-19102}
BIN=target/release/net-exporter
TAG=soak$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for i in $(seq 1 "$N"); do echo "netns del ${TAG}n$i"; done | ip -force -batch - 2>/dev/null || true
}
trap cleanup EXIT

for i in $(seq 1 "$N"); do
  echo "netns add ${TAG}n$i"
  echo "link add ${TAG}h$i type veth peer name eth0 netns ${TAG}n$i"
done | ip -batch -
for i in $(seq 1 "$N"); do
  ip -n "${TAG}n$i" link set lo up
  # Traffic: a server and a client that connects, sends and closes, once a second.
  ip netns exec "${TAG}n$i" python3 -c '
import socket, threading, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 8000)); l.listen(64)
def serve():
    while True:
        c, _ = l.accept(); c.recv(4096); c.send(b"ok"); c.close()
threading.Thread(target=serve, daemon=True).start()
while True:
    s = socket.create_connection(("127.0.0.1", 8000)); s.send(b"x" * 1000); s.recv(10); s.close()
    time.sleep(1)
' &
  pids+=($!)
done

"$BIN" --web.listen-address="127.0.0.1:$PORT" --log.level=warn >/dev/null 2>&1 &
agent=$!
pids+=("$agent")
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.2; done
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent/status"; }
# The peak since start (start-up included): what a memory limit must hold.
hwm() { awk '/VmHWM/ {print $2}' "/proc/$agent/status"; }
printf '%8s %10s %10s %14s %8s\n' elapsed_s rss_kib hwm_kib cpu_ms/scrape series
last_cpu=$(cpu); scrapes=0; start=$(date +%s); rows=()
while :; do
  now=$(date +%s); elapsed=$((now - start))
  [ "$elapsed" -ge "$SECS" ] && break
  series=$(curl -sf "http://127.0.0.1:$PORT/metrics" | grep -vc '^#' || true)
  scrapes=$((scrapes + 1))
  if [ $((scrapes % 30)) -eq 0 ]; then
    c=$(cpu)
    row=$(printf '%8d %10d %10d %14.2f %8d' "$elapsed" "$(rss)" "$(hwm)" "$(echo "($c - $last_cpu) * 1000 / $hz / 30" | bc -l)" "$series")
    echo "$row"; rows+=("$row")
    last_cpu=$c
  fi
  sleep 1
done
# Flat within noise: the last third against the first third (after the first minute).
printf '%s\n' "${rows[@]}" | awk '
  { t[NR] = $1; r[NR] = $2; h = $3; c[NR] = $4 }
  END {
    n = 0; for (i = 1; i <= NR; i++) if (t[i] >= 60) { n++; R[n] = r[i]; C[n] = c[i] }
    if (n < 3) { print "too short for a trend"; exit }
    k = int(n / 3); fr = fc = lr = lc = 0
    for (i = 1; i <= k; i++) { fr += R[i]; fc += C[i]; lr += R[n - k + i]; lc += C[n - k + i] }
    printf "first third: RSS %.0f KiB, %.2f ms CPU/scrape; last third: RSS %.0f KiB (%.3fx), %.2f ms CPU/scrape (%.3fx)\n",
      fr / k, fc / k, lr / k, lr / fr, lc / k, (fc > 0 ? lc / fc : 0)
    printf "peak since start (VmHWM): %.0f KiB, %.2fx the last third'"'"'s RSS\n", h, (lr > 0 ? h * k / lr : 0)
  }'
