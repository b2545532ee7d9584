#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: steady where wall-clock figures
# on this machine move by ±15 %, and independent of what else runs. For each binary, two runs
# under callgrind (LOW and LOW+N plain HTTP/1.1 requests through h2load --h1 to one nginx
# backend pair at 90/10); the difference divided by N is the marginal cost of a request, with
# start-up and shutdown cancelled out.
#
# Usage: benches/callgrind.sh BINARY [BINARY…]   (e.g. an old build beside target/release/veer)
# Env:   N=20000 LOW=2000 CONNS=16 H2=1 (HTTPS with HTTP/2 instead of plain HTTP/1.1)
#        ACCESS=PATH  with the access log on, to PATH (a file, /dev/null); JSON lines
#        ACCESS_FORMAT=combined  the access log's other format
#        PORT_BASE=18281  the first of the ports it uses (B1, B2, then +9, +10, +13): engineers
#                     measuring at once on one machine each take their own
#        KEEP=DIR     keep each run's profile as DIR/NAME.LOW.out and DIR/NAME.HIGH.out, for
#                     `callgrind_annotate --inclusive=yes` (see where the instructions go)
# Needs: apt-get install -y valgrind nginx nghttp2-client openssl
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
need "apt-get install -y valgrind nginx nghttp2-client openssl curl" valgrind nginx h2load openssl curl
[ $# -gt 0 ] || { echo "usage: $0 BINARY [BINARY…]" >&2; exit 2; }
N=${N:-20000}; LOW=${LOW:-2000}; CONNS=${CONNS:-16}
PB=${PORT_BASE:-18281}
B1=127.0.0.1:$PB; B2=127.0.0.1:$((PB + 1)); P=$((PB + 9)); PS=$((PB + 10)); ADMIN=$((PB + 13))
ports_free "$PB" $((PB + 1)) $P $PS $ADMIN
W=$(mktemp -d -t veer-callgrind.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
make_cert "$W" cert localhost
backend_conf "$W" $B1 $B2
nginx -c "$W/backend.conf" -p "$W" & pids+=($!)
veer_conf 127.0.0.1:$P 127.0.0.1:$PS 127.0.0.1:$ADMIN "$W/cert" $B1 $B2 bench >"$W/veer.toml"
[ -n "${ACCESS:-}" ] && printf '[log]\naccess = "%s"\naccess_format = "%s"\n' "$ACCESS" \
  "${ACCESS_FORMAT:-json}" >>"$W/veer.toml"
url=http://127.0.0.1:$P/; flags=(--h1); [ -n "${H2:-}" ] && { url=https://127.0.0.1:$PS/; flags=(); }

# ir BINARY REQUESTS TAG: total instructions of one veer run that served REQUESTS requests.
ir() {
  local out=$W/cg.out
  rm -f "$out"
  VEER_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$1" run --config "$W/veer.toml" \
    >"$W/veer.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do curl -sk -o /dev/null "$url" && break; sleep 0.2; done
  h2load "${flags[@]}" -n "$2" -c "$CONNS" -t 1 "$url" >"$W/h2load.log" 2>&1
  grep -q "succeeded, 0 failed, 0 errored" "$W/h2load.log" ||
    grep -q " 0 failed, 0 errored" "$W/h2load.log" || { cat "$W/h2load.log" >&2; exit 1; }
  kill -TERM $pid; wait $pid || true
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$out" "$KEEP/$(basename "$1").$3.out"; }
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
for bin in "$@"; do
  lo=$(ir "$bin" "$LOW" LOW); hi=$(ir "$bin" $((LOW + N)) HIGH)
  printf '%-40s %8.0f instructions per request  (%s: %s, %s: %s)\n' "$bin" \
    "$(python3 -c "print(($hi - $lo) / $N)")" "$LOW" "$lo" $((LOW + N)) "$hi"
done
