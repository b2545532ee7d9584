#!/usr/bin/env bash
# Backends by name against the same backends as literals (issue 17): one pool of 2 names x 8
# addresses each, served by a DNS server on loopback (benches/dns_zone.py), against that pool
# written as 16 IP literals. One veer worker, one nginx worker answering on all 16 addresses,
# wrk as in benches/load.sh (-t1, CONNS connections); rounds alternate the two configs so
# machine drift hits both alike. Quote the medians and the names/literals ratios.
#
# Usage: benches/dns.sh [rounds=5] [seconds=5] [connections=64]
# Needs: apt-get install -y wrk nginx
# Env:   NO_BUILD=1 to skip `cargo build --release`; VEER_BIN=path another veer binary
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
ROUNDS=${1:-5}; SECS=${2:-5}; CONNS=${3:-64}
need "apt-get install -y wrk nginx" wrk nginx curl python3
if [ -z "${VEER_BIN:-}" ]; then
  [ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
  VEER_BIN=target/release/veer
fi
PA=18181; PB=18182; DNS=127.0.0.1:18053; LISTEN=127.0.0.1:18193
ports_free $PA $PB 18193 18194
W=$(mktemp -d -t veer-dns-bench.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$W"; }
trap cleanup EXIT

A=(); B=()
for i in $(seq 1 8); do A+=("127.0.0.$i"); B+=("127.0.0.$((i + 8))"); done
{
  echo "daemon off; worker_processes 1; pid $W/backend.pid; error_log $W/backend.err;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off; keepalive_requests 1000000;"
  echo "  server {"
  for ip in "${A[@]}"; do echo "    listen $ip:$PA;"; done
  for ip in "${B[@]}"; do echo "    listen $ip:$PB;"; done
  echo "    location / { return 200 \"hello\n\"; } } }"
} >"$W/backend.conf"
nginx -c "$W/backend.conf" -p "$W" & pids+=($!)
python3 benches/dns_zone.py "$DNS" "a.bench=$(IFS=,; echo "${A[*]}")" "b.bench=$(IFS=,; echo "${B[*]}")" & pids+=($!)

conf() { # backends-list
  printf '[server]\nlisten = ["%s"]\nworkers = 1\ndns_servers = ["%s"]\n[admin]\nlisten = "127.0.0.1:18194"\n[pools.app]\nbackends = [%s]\n[[routes]]\nname = "bench"\nsplit = { app = 1 }\n' "$LISTEN" "$DNS" "$1"
}
lits=""
for ip in "${A[@]}"; do lits="$lits\"$ip:$PA\", "; done
for ip in "${B[@]}"; do lits="$lits\"$ip:$PB\", "; done
conf "${lits%, }" >"$W/literals.toml"
conf "\"a.bench:$PA\", \"b.bench:$PB\"" >"$W/names.toml"

cputicks() { awk '{print $14+$15}' "/proc/$1/stat"; }
: >"$W/results"
for r in $(seq "$ROUNDS"); do
  for mode in literals names; do
    VEER_LOG=warn "$VEER_BIN" run --config "$W/$mode.toml" >"$W/veer.log" 2>&1 &
    vp=$!
    for _ in $(seq 50); do curl -sf -o /dev/null "http://$LISTEN/" && break; sleep 0.1; done
    n=$(curl -s http://127.0.0.1:18194/api/status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["pools"]["app"]["backends"]))')
    [ "$n" = 16 ] || { echo "$mode: $n backends, want 16"; cat "$W/veer.log"; kill $vp; exit 1; }
    c0=$(cputicks $vp)
    out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "http://$LISTEN/" 2>&1)
    c1=$(cputicks $vp)
    kill $vp; wait $vp 2>/dev/null || true
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    us=$(python3 -c "print(round(($c1-$c0)*1e6/$(getconf CLK_TCK)/max(1,$reqs),2))")
    echo "$r $mode $rps $p99 $us $errs" | tee -a "$W/results"
  done
done
echo "=== medians over $ROUNDS rounds (req/s, p99, cpu/req us), wrk -t1 -c$CONNS -d${SECS}s ==="
python3 - "$W/results" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s)', s); v = float(m.group(1))
    return v / 1000 if m.group(2) == 'us' else v * 1000 if m.group(2) == 's' else v
med = {}
for mode in ("literals", "names"):
    rr = [r for r in rows if r[1] == mode]
    med[mode] = (statistics.median(float(r[2]) for r in rr), statistics.median(ms(r[3]) for r in rr),
                 statistics.median(float(r[4]) for r in rr))
    print(f"{mode:9s} req/s {med[mode][0]:9.0f}  p99 {med[mode][1]:7.3f} ms  cpu/req {med[mode][2]:6.2f} us")
by_round = {}
for r in rows:
    by_round.setdefault(r[0], {})[r[1]] = r
ratios = [(float(v["names"][2]) / float(v["literals"][2]), float(v["names"][4]) / float(v["literals"][4]))
          for v in by_round.values() if "names" in v and "literals" in v]
print("names/literals per round: req/s " + " ".join(f"{a:.3f}" for a, _ in ratios)
      + "; cpu/req " + " ".join(f"{b:.3f}" for _, b in ratios))
print(f"median names/literals: req/s {statistics.median(a for a, _ in ratios):.3f}  cpu/req {statistics.median(b for _, b in ratios):.3f}")
PY
