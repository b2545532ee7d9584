#!/usr/bin/env bash
# HTTPS + HTTP/2 benchmark: h2load over TLS 1.3 with HTTP/2 (ALPN h2) against veer, HAProxy and
# nginx side by side, one worker each, on loopback, all with the same certificate (ECDSA P-256,
# SNI bench.test), the same TLS 1.3 cipher, and forwarding 90/10 over HTTP/1.1 to the same two
# nginx backends. Rounds alternate the targets so machine drift hits all alike. Reports the
# medians of requests/s, p99 latency and proxy CPU time per request, and veer's ratios to the
# others; quote the ratios, never one round's absolute figure.
#
# Usage: benches/tls.sh [rounds=3] [seconds=5] [connections=32] [streams=10]
#        (keep each run's output with tee; benches/pool.py pools the rounds of several runs)
# Env:   LAT_SECS=3     length of each round's latency pass (h2load with a per-request log)
# Env:   VEER_BIN=path   a veer binary to use instead of building target/release/veer
#        VEER_BIN_B=path a second veer binary run beside the first as "veer-b" (A/B a change)
#        VEER_B_NAME=name the second binary's name in the results (default veer-b)
#        PGO=1           build the profile-guided binary (deploy/pgo-build.sh) and run it as
#                        "veer-pgo" beside the plain release build
#        PIN=1           pin the proxies to CPU 1 and h2load and the backends to CPU 0, so the
#                        proxy under test has a core of its own (less scheduling noise)
# Needs: apt-get install -y nghttp2-client haproxy nginx openssl python3
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
ROUNDS=${1:-3}; SECS=${2:-5}; CONNS=${3:-32}; STREAMS=${4:-10}
need "apt-get install -y nghttp2-client haproxy nginx openssl curl python3" \
  h2load haproxy nginx openssl curl python3
if [ -z "${VEER_BIN:-}" ]; then
  cargo build --release --quiet
  VEER_BIN=$PWD/target/release/veer
fi
if [ -n "${PGO:-}" ]; then
  PGO_OUT=$PWD/target/pgo/veer deploy/pgo-build.sh >/dev/null
  VEER_BIN_B=$PWD/target/pgo/veer; VEER_B_NAME=veer-pgo
fi
VB=${VEER_B_NAME:-veer-b}
# PIN=1: taskset prefixes for the proxies and for the load side.
if [ -n "${PIN:-}" ]; then
  command -v taskset >/dev/null || { echo "PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  ON_PROXY="taskset -c 1"; ON_LOAD="taskset -c 0"
else
  ON_PROXY=""; ON_LOAD=""
fi

ports_free 18181 18182 18190 18191 18192 18193 18194 18195 18196 18197

W=$(mktemp -d /tmp/veer-tls-bench.XXXX)
# h2load's per-request logs go elsewhere: veer watches its config file's folder, and a log
# written there would wake it for every write.
L=$(mktemp -d /tmp/veer-tls-lat.XXXX)
B1=127.0.0.1:18181; B2=127.0.0.1:18182
HOST=bench.test
CIPHER=TLS_AES_128_GCM_SHA256
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$W" "$L"; }
trap cleanup EXIT

# One certificate for all three proxies.
make_cert "$W" bench "$HOST"
cat "$W/bench.crt" "$W/bench.key" >"$W/bench.pem" # HAProxy wants both in one file

backend_conf "$W" "$B1" "$B2"
$ON_LOAD nginx -c "$W/backend.conf" -p "$W" & pids+=($!)

declare -A ppid port
cat >"$W/haproxy.cfg" <<EOF
global
  maxconn 8000
  nbthread 1
  ssl-default-bind-ciphersuites $CIPHER
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 50s
  timeout server 50s
  http-reuse always
frontend fe
  bind 127.0.0.1:18190 ssl crt $W/bench.pem alpn h2,http/1.1
  default_backend be
backend be
  balance roundrobin
  server b1 $B1 weight 90
  server b2 $B2 weight 10
EOF
$ON_PROXY haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 & pids+=($!); ppid[haproxy]=$!; port[haproxy]=18190

cat >"$W/nginx-proxy.conf" <<EOF
daemon off; worker_processes 1; pid $W/proxy.pid; error_log $W/proxy.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server $B1 weight=90; server $B2 weight=10; keepalive 128; }
  server { listen 127.0.0.1:18191 ssl http2;
    ssl_certificate $W/bench.crt; ssl_certificate_key $W/bench.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_conf_command Ciphersuites $CIPHER;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
$ON_PROXY nginx -c "$W/nginx-proxy.conf" -p "$W" & pids+=($!); ppid[nginx]=$!; port[nginx]=18191

veer_conf 127.0.0.1:18192 127.0.0.1:18193 127.0.0.1:18194 bench "$B1" "$B2" bench >"$W/veer.toml"
$ON_PROXY env VEER_LOG=warn "$VEER_BIN" run --config "$W/veer.toml" >"$W/veer.log" 2>&1 & pids+=($!); ppid[veer]=$!; port[veer]=18193
targets="haproxy nginx veer"
if [ -n "${VEER_BIN_B:-}" ]; then
  sed -e 's/18192/18195/' -e 's/18193/18196/' -e 's/18194/18197/' "$W/veer.toml" >"$W/veer-b.toml"
  $ON_PROXY env VEER_LOG=warn "$VEER_BIN_B" run --config "$W/veer-b.toml" >"$W/veer-b.log" 2>&1 & pids+=($!); ppid[$VB]=$!; port[$VB]=18196
  targets="$targets $VB"
fi

sleep 1.5
for name in $targets; do
  p=${port[$name]}
  got=$(curl -sk --http2 --resolve "$HOST:$p:127.0.0.1" -o /dev/null -w '%{http_code} %{http_version}' "https://$HOST:$p/")
  [ "$got" = "200 2" ] || { echo "$name on :$p answered '$got' (want 200 over HTTP/2)"; cat "$W"/*.log "$W"/*.err 2>/dev/null | tail -20; exit 1; }
done

cputicks() { # utime+stime of a process (all its threads) and its children, in clock ticks
  local t=0 p
  for p in $1 $(pgrep -P "$1"); do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done
  echo $t; }

# Two passes per round and target. The first measures requests/s and CPU per request with
# nothing else on the client: h2load writing a line per request (--log-file) costs the client
# enough CPU on a 2-core machine that every proxy then waits on the client. The second, of
# LAT_SECS, writes that log for the p50/p99 latencies, and its CPU per request is reported too
# (cpu_logged: the proxies' cost when the client, not the proxy, sets the pace).
LAT_SECS=${LAT_SECS:-3}
echo "round target req/s p50_ms p99_ms cpu_us_per_req cpu_us_logged"
: >"$W/results"
run_h2load() { # port seconds [extra h2load args...]
  local p=$1 secs=$2; shift 2
  $ON_LOAD h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$secs" --tls13-ciphers=$CIPHER \
    --connect-to=127.0.0.1:$p "$@" "https://$HOST:$p/" 2>&1; }
per_req() { python3 -c "print(round(($2-$1)*1e6/$(getconf CLK_TCK)/max(1,${3:-0}),2))"; }
for r in $(seq "$ROUNDS"); do
  for name in $targets; do
    p=${port[$name]}; pid=${ppid[$name]}
    c0=$(cputicks "$pid")
    out=$(run_h2load "$p" "$SECS")
    c1=$(cputicks "$pid")
    rps=$(echo "$out" | awk '/^finished in/ {gsub(",","",$4); print $4}')
    ok=$(echo "$out" | awk '/^requests:/ {print $8}')
    failed=$(echo "$out" | awk '/^requests:/ {print $10+$12+$14}')
    proto=$(echo "$out" | awk '/Application protocol:/ {print $3}')
    [ "$proto" = h2 ] || { echo "$name: h2load did not negotiate h2:"; echo "$out"; exit 1; }
    # The 32 handshakes are part of the run (no warm-up), as they are part of the CPU count.
    us=$(per_req "$c0" "$c1" "$ok")
    c0=$(cputicks "$pid")
    out=$(run_h2load "$p" "$LAT_SECS" --log-file="$L/$name.lat")
    c1=$(cputicks "$pid")
    us_logged=$(per_req "$c0" "$c1" "$(echo "$out" | awk '/^requests:/ {print $8}')")
    read -r p50 p99 < <(python3 - "$L/$name.lat" <<'PY'
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
q = lambda f: d[min(len(d) - 1, int(f * len(d)))] / 1000
print(f"{q(0.50):.3f} {q(0.99):.3f}")
PY
)
    echo "$r $name $rps $p50 $p99 $us $us_logged ${failed:+failed=$failed}" | tee -a "$W/results"
  done
done

echo "--- medians over $ROUNDS rounds: h2load -t1 -c$CONNS -m$STREAMS -D${SECS}s, TLS 1.3 $CIPHER, HTTP/2"
python3 - "$W/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for n in dict.fromkeys(r[1] for r in rows):
    rr = [r for r in rows if r[1] == n]
    med[n] = [statistics.median(float(r[i]) for r in rr) for i in (2, 3, 4, 5, 6)]
    print(f"{n:8s} req/s={med[n][0]:9.0f}  p50={med[n][1]:.3f}ms  p99={med[n][2]:.3f}ms  cpu/req={med[n][3]:.2f}us  cpu/req(logged)={med[n][4]:.2f}us")
veers = [n for n in med if n.startswith('veer')]
for me in veers:
    for o in ('haproxy', 'nginx', 'veer'):
        if me in med and o in med and me != o:
            v, x = med[me], med[o]
            print(f"{me}/{o}: req/s {v[0]/x[0]:.2f}  p99 {v[2]/x[2]:.2f}  cpu/req {v[3]/x[3]:.2f}  cpu/req(logged) {v[4]/x[4]:.2f}")
# The machine's speed drifts between rounds (a shared VM); a ratio taken within each round,
# between runs seconds apart, cancels most of that. Their median is the steadier figure.
print("--- median of per-round ratios (each round's runs are seconds apart)")
by = {(r[0], r[1]): [float(x) for x in r[2:7]] for r in rows}
rounds = sorted({r[0] for r in rows}, key=int)
for me in veers:
    for o in ('haproxy', 'nginx', 'veer'):
        pairs = [(by[(k, me)], by[(k, o)]) for k in rounds if (k, me) in by and (k, o) in by and me != o]
        if pairs:
            q = lambda i: statistics.median(a[i] / b[i] for a, b in pairs)
            print(f"{me}/{o}: req/s {q(0):.2f}  p99 {q(2):.2f}  cpu/req {q(3):.2f}  cpu/req(logged) {q(4):.2f}")
PY
