#!/usr/bin/env bash
# Memory benchmark (issue 15): RSS growth of veer beside HAProxy and nginx in one run, one
# worker each, on loopback.
#   - per idle client connection: N clients that connect and send nothing; that send one
#     HTTP/1.1 request and then sit on keep-alive; the same over TLS (HTTP/1.1) and over TLS
#     with HTTP/2 (one request, then idle);
#   - per backend: a pool of BACKENDS backends against a pool of one (no health checks);
#   - per route: ROUTES host routes of two pools with one backend each, against one route.
# Each figure starts a fresh proxy, so one measurement's high-water mark never hides the next.
# RSS is stable from run to run (unlike times): the figures may be quoted from one run.
#
# Usage: benches/memory.sh [clients=3000] [backends=4000] [routes=1000]
# Needs: apt-get install -y haproxy nginx openssl python3 curl
# Env:   VEER_BIN=path  the veer binary (default: target/release/veer, built unless NO_BUILD=1)
#        PARTS="conns tables"  what to measure (conns: idle client connections; tables: per
#                               backend and per route)
#        PROXIES="haproxy nginx veer"  which proxies (ratios need haproxy and nginx)
#        PORT_BASE=18180  ports used: BASE+1, +2 (backends), +10, +11 (proxy), +14 (admin)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}; BACKENDS=${2:-4000}; ROUTES=${3:-1000}
# shellcheck source=benches/common.sh
. benches/common.sh
need "apt-get install -y haproxy nginx openssl python3 curl" haproxy nginx openssl python3 curl
if [ -z "${VEER_BIN:-}" ]; then
  [ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
  VEER_BIN=target/release/veer
fi
O=${PORT_BASE:-18180}  # another run beside this one needs another PORT_BASE
B1=127.0.0.1:$((O + 1)); B2=127.0.0.1:$((O + 2)); P=$((O + 10)); PS=$((O + 11)); ADMIN=$((O + 14))
ports_free "${B1#*:}" "${B2#*:}" $P $PS $ADMIN
ulimit -n $((N * 5 + 2048)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
W=$(mktemp -d -t veer-memory.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

make_cert "$W" cert localhost
cat "$W/cert.crt" "$W/cert.key" >"$W/cert.pem"
backend_conf "$W" $B1 $B2
nginx -c "$W/backend.conf" -p "$W" & pids+=($!)

# rss_kib PID: resident set of a process and its children (nginx's worker), in KiB.
rss_kib() {
  local t=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    [ -r /proc/$p/status ] && t=$((t + $(awk '/^VmRSS/ {print $2}' /proc/$p/status)))
  done
  echo $t
}
wait_up() { # url: until it answers, at most ~60 s (a large config takes a while to load)
  for _ in $(seq 600); do curl -sk -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "nothing answers at $1" >&2; exit 1
}
# settle PID: wait until RSS stops moving (allocators return memory lazily): the same for 2 s
# (five readings 0.5 s apart). Half a second was too short: veer's allocator gives back what
# a start freed only at its next call, about a second later (the console's first sample), so
# a 0.5 s check read the start's plateau (36 MiB for 1,000 routes where 25 MiB is the level).
settle() {
  local last same=0 now
  last=$(rss_kib "$1")
  while [ $same -lt 4 ]; do
    sleep 0.5; now=$(rss_kib "$1")
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last=$now; fi
  done
  echo "$last"
}

# --- configs: conf_KIND NAME ARG writes $W/NAME.conf and echoes the command to run it ---
haproxy_conf() { # name kind(conns|backends|routes) n
  {
    printf 'global\n  maxconn %d\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n  timeout http-keep-alive 600s\n  http-reuse always\n' $((N * 2 + 100))
    printf 'frontend fe\n  bind 127.0.0.1:%s\n  bind 127.0.0.1:%s ssl crt %s alpn h2,http/1.1\n' $P $PS "$W/cert.pem"
    case $2 in
      conns) printf '  default_backend be\nbackend be\n  server b1 %s weight 90\n  server b2 %s weight 10\n' $B1 $B2 ;;
      backends)
        printf '  default_backend be\nbackend be\n'
        for i in $(seq 0 $(($3 - 1))); do printf '  server s%d 127.1.%d.%d:80\n' "$i" $((i / 250)) $((i % 250 + 1)); done ;;
      routes)
        for i in $(seq 0 $(($3 - 1))); do printf '  use_backend r%d if { hdr(host) -i h%d.example }\n' "$i" "$i"; done
        printf '  default_backend r0\n'
        for i in $(seq 0 $(($3 - 1))); do printf 'backend r%d\n  server blue %s weight 90\n  server green %s weight 10\n' "$i" $B1 $B2; done ;;
    esac
  } >"$W/$1.cfg"
  echo "haproxy -f $W/$1.cfg -db"
}
nginx_conf() {
  {
    printf 'daemon off; worker_processes 1; pid %s/%s.pid; error_log %s/%s.err;\n' "$W" "$1" "$W" "$1"
    printf 'events { worker_connections %d; }\nhttp { access_log off; keepalive_requests 1000000; keepalive_timeout 600s;\n' $((N * 2 + 100))
    case $2 in
      conns) printf '  upstream be { server %s weight=90; server %s weight=10; keepalive 128; }\n' $B1 $B2 ;;
      backends)
        printf '  upstream be {\n'
        for i in $(seq 0 $(($3 - 1))); do printf '    server 127.1.%d.%d:80;\n' $((i / 250)) $((i % 250 + 1)); done
        printf '  }\n' ;;
      routes)
        for i in $(seq 0 $(($3 - 1))); do printf '  upstream r%d { server %s weight=90; server %s weight=10; }\n  server { listen 127.0.0.1:%s; server_name h%d.example; location / { proxy_pass http://r%d; } }\n' "$i" $B1 $B2 $P "$i" "$i"; done ;;
    esac
    printf '  server { listen 127.0.0.1:%s default_server; listen 127.0.0.1:%s ssl http2;\n    ssl_certificate %s/cert.crt; ssl_certificate_key %s/cert.key;\n    location / { proxy_pass http://%s; proxy_http_version 1.1; proxy_set_header Connection ""; } } }\n' \
      $P $PS "$W" "$W" "$([ "$2" = conns ] && echo be || echo $B1)"
  } >"$W/$1.conf"
  echo "nginx -c $W/$1.conf -p $W"
}
veer_conf_mem() {
  {
    printf '[server]\nlisten = ["127.0.0.1:%s"]\ntls_listen = ["127.0.0.1:%s"]\nworkers = 1\nidle_timeout = "600s"\nheader_read_timeout = "60s"\nmax_connections = %d\n' $P $PS $((N * 2 + 100))
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[[tls.certificates]]\ncert = "%s/cert.crt"\nkey = "%s/cert.key"\n' $ADMIN "$W" "$W"
    case $2 in
      conns) printf '[pools.blue]\nbackends = ["%s"]\n[pools.green]\nbackends = ["%s"]\n[[routes]]\nname = "web"\nsplit = { blue = 90, green = 10 }\n' $B1 $B2 ;;
      backends)
        printf '[pools.blue]\nbackends = [\n'
        for i in $(seq 0 $(($3 - 1))); do printf '  "127.1.%d.%d:80",\n' $((i / 250)) $((i % 250 + 1)); done
        printf ']\n[[routes]]\nname = "web"\nsplit = { blue = 100 }\n' ;;
      routes)
        for i in $(seq 0 $(($3 - 1))); do printf '[pools.b%d]\nbackends = ["%s"]\n[pools.g%d]\nbackends = ["%s"]\n[[routes]]\nname = "r%d"\nhosts = ["h%d.example"]\nsplit = { b%d = 90, g%d = 10 }\n' "$i" $B1 "$i" $B2 "$i" "$i" "$i" "$i"; done ;;
    esac
  } >"$W/$1.toml"
  echo "env VEER_LOG=warn $VEER_BIN run --config $W/$1.toml"
}

# start PROXY KIND N: start the proxy with that config, wait until it serves; sets SPID and
# SRSS (settled RSS, KiB). Runs in this shell, so `stop` can wait for it.
start() {
  local cmd
  cmd=$("${1}_conf$([ "$1" = veer ] && echo _mem)" "$1-$2-$3" "$2" "$3")
  $cmd >"$W/$1.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  local host=localhost; [ "$2" = routes ] && host=h0.example
  for _ in $(seq 600); do curl -s -o /dev/null -H "Host: $host" "http://127.0.0.1:$P/" && break; sleep 0.1; done
  curl -s -o /dev/null -H "Host: $host" "http://127.0.0.1:$P/" || { echo "$1 ($2 $3) did not start:" >&2; cat "$W/$1.log" >&2; exit 1; }
  SPID=$pid; SRSS=$(settle $pid)
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }  # frees the ports

PARTS=${PARTS:-conns tables}; PROXIES=${PROXIES:-haproxy nginx veer}
part() { [[ " $PARTS " == *" $1 "* ]]; }
declare -A R
items=()
if part conns; then
items+=(connect h1 tls-h1 tls-h2)
echo "=== idle client connections: $N each (KiB per connection) ==="
for proxy in $PROXIES; do
  for mode in connect h1 tls-h1 tls-h2; do
    start $proxy conns 1; pid=$SPID; base=$SRSS
    port=$P; [ "${mode#tls}" != "$mode" ] && port=$PS
    python3 benches/idle_clients.py 127.0.0.1 $port "$N" $mode localhost >"$W/clients.out" 2>&1 &
    cpid=$!
    for _ in $(seq 6000); do grep -q '^ready\|^failed' "$W/clients.out" && break; sleep 0.1; done
    grep -q '^ready' "$W/clients.out" || { echo "$proxy $mode: clients: $(cat "$W/clients.out")" >&2; exit 1; }
    after=$(settle "$pid")
    R[$proxy,$mode]=$(python3 -c "print(f'{($after - $base) / $N:.2f}')")
    printf '%-8s %-8s base %7d KiB  with %d idle %8d KiB  per connection %6s KiB\n' $proxy $mode "$base" "$N" "$after" "${R[$proxy,$mode]}"
    kill $cpid 2>/dev/null || true; wait $cpid 2>/dev/null || true
    stop "$pid"
  done
done
fi

if part tables; then
items+=(backends routes)
echo "=== per backend ($BACKENDS against 1) and per route ($ROUTES host routes of 2 pools against 1) ==="
for proxy in $PROXIES; do
  for kind in backends routes; do
    n=$BACKENDS; [ $kind = routes ] && n=$ROUTES
    start $proxy $kind 1; one=$SRSS; stop "$SPID"
    t0=$(date +%s.%N)
    start $proxy $kind "$n"; many=$SRSS; stop "$SPID"
    t1=$(date +%s.%N)
    R[$proxy,$kind]=$(python3 -c "print(f'{($many - $one) / ($n - 1):.2f}')")
    printf '%-8s %-8s 1: %7d KiB  %d: %8d KiB  per one %7s KiB  (started and settled in %.1f s)\n' \
      $proxy $kind "$one" "$n" "$many" "${R[$proxy,$kind]}" "$(python3 -c "print($t1 - $t0)")"
  done
done
fi

# Startup and reload times of the large configs (veer only): until /readyz answers, and a
# `POST /api/reload` that changes one weight (a backend's in the 4,000-backend config, a
# route's split in the 1,000-route one). Target (issue 15): both under 200 ms.
echo "=== veer: startup and one-weight reload of the large configs (median of 5) ==="
veer_conf_mem veer-times-backends backends "$BACKENDS" >/dev/null
printf '%-26s ' "$BACKENDS backends:"
python3 benches/config_times.py "$VEER_BIN" "$W/veer-times-backends.toml" $ADMIN \
  '"127.1.0.1:80"' '{ addr = "127.1.0.1:80", weight = 2 }' 5
veer_conf_mem veer-times-routes routes "$ROUTES" >/dev/null
printf '%-26s ' "$ROUTES routes of 2 pools:"
python3 benches/config_times.py "$VEER_BIN" "$W/veer-times-routes.toml" $ADMIN \
  'b0 = 90, g0 = 10' 'b0 = 80, g0 = 20' 5

echo "=== summary: KiB of RSS per item (and veer / other) ==="
printf '%-18s %10s %10s %10s %14s %14s\n' item haproxy nginx veer veer/haproxy veer/nginx
for item in "${items[@]}"; do
  python3 - "$item" "${R[haproxy,$item]:-nan}" "${R[nginx,$item]:-nan}" "${R[veer,$item]:-nan}" <<'PY'
import math, sys
item, h, n, v = sys.argv[1], *map(float, sys.argv[2:])
label = {"connect": "idle, no request", "h1": "idle keep-alive", "tls-h1": "idle TLS h1",
         "tls-h2": "idle TLS h2", "backends": "backend", "routes": "route (2 pools)"}[item]
ratio = lambda a, b: f"{a / b:.2f}" if b > 0.05 and not math.isnan(a) else "-"
print(f"{label:18s} {h:10.2f} {n:10.2f} {v:10.2f} {ratio(v, h):>14s} {ratio(v, n):>14s}")
PY
done
