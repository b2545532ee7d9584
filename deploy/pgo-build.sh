#!/usr/bin/env bash
# Profile-guided release build of veer.
#
# 1. builds an instrumented veer;
# 2. drives it for about 25 s with a mixed workload on loopback: HTTPS with HTTP/2 and with
#    HTTP/1.1, plain HTTP/1.1, uploads over each, to two nginx backends split 90/10, plus the
#    admin API; the profile covers what a production proxy does, not one benchmark;
# 3. merges the profile and builds the final binary with it.
#
# The result behaves exactly like `cargo build --release` (same source, same flags); LLVM only
# lays out and inlines the hot code better. Measured on this project's benchmarks: about 20 %
# less user CPU per request (see README, "Performance").
#
# Usage: deploy/pgo-build.sh            -> target/pgo/veer
# Env:   PGO_OUT=path   where to put the binary (default target/pgo/veer)
#        PGO_SECS=5     length of each HTTP/2 training pass (the others are shorter)
# Needs: rustup (for the llvm-tools component), and apt-get install -y nghttp2-client nginx openssl curl
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
OUT=${PGO_OUT:-target/pgo/veer}
SECS=${PGO_SECS:-5}
need "apt-get install -y nghttp2-client nginx openssl curl" h2load nginx openssl curl

HOST_TRIPLE=$(rustc -vV | awk '/^host:/ {print $2}')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST_TRIPLE/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
  rustup component add llvm-tools >&2
fi
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found at $PROFDATA (rustup component add llvm-tools)" >&2; exit 1; }

ports_free 18281 18282 18283 18284 18285

W=$(mktemp -d /tmp/veer-pgo.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

# --target makes RUSTFLAGS apply to veer and its dependencies only, not to build scripts and
# proc macros (which would otherwise run instrumented and write profiles of their own).
echo "pgo: building the instrumented binary" >&2
RUSTFLAGS="-Cprofile-generate=$W/profiles" \
  cargo build --release --locked --quiet --target "$HOST_TRIPLE" --target-dir target/pgo-gen
GEN=target/pgo-gen/$HOST_TRIPLE/release/veer

HOST=pgo.test
make_cert "$W" pgo "$HOST"
head -c 65536 /dev/urandom >"$W/body.bin"

B1=127.0.0.1:18281; B2=127.0.0.1:18282
backend_conf "$W" "$B1" "$B2"
nginx -c "$W/backend.conf" -p "$W" & pids+=($!)

# The benchmark's config, plus active health checks so their client is trained too.
{ veer_conf 127.0.0.1:18283 127.0.0.1:18284 127.0.0.1:18285 pgo "$B1" "$B2" pgo
  for pool in blue green; do
    printf '[pools.%s.health_check]\npath = "/health"\ninterval = "1s"\n' "$pool"
  done
} >"$W/veer.toml"
LLVM_PROFILE_FILE="$W/profiles/veer-%p-%m.profraw" VEER_LOG=warn \
  "$GEN" run --config "$W/veer.toml" >"$W/veer.log" 2>&1 &
veer=$!; pids+=($veer)
for _ in $(seq 50); do
  curl -sfk --resolve "$HOST:18284:127.0.0.1" "https://$HOST:18284/" -o /dev/null && break
  sleep 0.2
done

echo "pgo: training (about $((SECS * 2 + 14)) s)" >&2
TLS=(--connect-to=127.0.0.1:18284 "https://$HOST:18284/")
train() { out=$(h2load -t1 "$@" 2>&1) || true
  echo "$out" | grep -q " 0 failed, 0 errored" || { echo "pgo: training run failed: h2load $*" >&2; echo "$out" | tail -5 >&2; exit 1; }; }
train -c32 -m10 -D"$SECS" "${TLS[@]}"                      # HTTPS, HTTP/2, GET
train -c8 -m4 -D2 -d "$W/body.bin" "${TLS[@]}"             # HTTPS, HTTP/2, 64 KiB uploads
train --h1 -c32 -D3 "${TLS[@]}"                            # HTTPS, HTTP/1.1
train --h1 -c64 -D"$SECS" http://127.0.0.1:18283/          # plain HTTP/1.1, GET
train --h1 -c8 -D2 -d "$W/body.bin" http://127.0.0.1:18283/ # plain HTTP/1.1, uploads
train -c16 -m10 -D2 http://127.0.0.1:18283/                # h2c (prior knowledge)
for path in / /api/status /metrics /healthz /readyz; do
  curl -sf "http://127.0.0.1:18285$path" -o /dev/null || true
done

# A clean exit writes the profile.
kill -TERM "$veer"; wait "$veer" || true
ls "$W"/profiles/*.profraw >/dev/null 2>&1 || { echo "pgo: veer wrote no profile" >&2; exit 1; }
"$PROFDATA" merge -o "$W/veer.profdata" "$W"/profiles/*.profraw

echo "pgo: building the optimized binary" >&2
RUSTFLAGS="-Cprofile-use=$W/veer.profdata" \
  cargo build --release --locked --quiet --target "$HOST_TRIPLE" --target-dir target/pgo
mkdir -p "$(dirname "$OUT")"
cp "target/pgo/$HOST_TRIPLE/release/veer" "$OUT"
echo "$OUT"
