#!/usr/bin/env bash
# Load benchmark: veer beside HAProxy, nginx and Caddy (one worker each, loopback, the same two
# nginx backends at 90/10), driven by ../shared/bench/compare.sh. Quote the medians and the
# veer/other ratios it prints, never one round's absolute figure.
#
# Usage: benches/load.sh [plain|resilience|both] [rounds=3] [seconds=5] [connections=64]
#   plain       the default blue/green split (compare.sh's own veer config)
#   resilience  the same with active health checks (interval 1s) and circuit breakers on
#               both pools, to compare against plain (issue 3: within 5% on rps and cpu/req)
#   both        plain, then resilience (the default)
# Needs: apt-get install -y wrk haproxy nginx caddy
# Env:   COMPARE=path/to/compare.sh (default ../shared/bench/compare.sh, beside the repo)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}; ROUNDS=${2:-3}; SECS=${3:-5}; CONNS=${4:-64}
COMPARE=${COMPARE:-../shared/bench/compare.sh}
[ -f "$COMPARE" ] || { echo "compare script not found at $COMPARE (set COMPARE=...)" >&2; exit 1; }
for tool in wrk haproxy nginx caddy curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk haproxy nginx caddy" >&2; exit 1; }
done

cargo build --release --quiet
export VEER_BIN=target/release/veer
export VEER_CMD_PREFIX="env VEER_WORKERS=1 VEER_LOG=warn"

# compare.sh fills in @LISTEN@, @B1@ and @B2@. The health endpoint is any path: the nginx
# backends answer 200 everywhere.
RESILIENCE=$(mktemp /tmp/veer-bench-resilience.XXXX.toml)
trap 'rm -f "$RESILIENCE"' EXIT
cat >"$RESILIENCE" <<'EOF'
[server]
listen = ["@LISTEN@"]
workers = 1
[admin]
listen = "127.0.0.1:18094"
[pools.blue]
backends = ["@B1@"]
[pools.blue.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
[pools.blue.circuit_breaker]
consecutive_failures = 5
open_for = "10s"
max_concurrent_requests = 10000
[pools.green]
backends = ["@B2@"]
[pools.green.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
[pools.green.circuit_breaker]
consecutive_failures = 5
open_for = "10s"
max_concurrent_requests = 10000
[[routes]]
name = "bench"
split = { blue = 90, green = 10 }
EOF

run() {
  echo "=== $1: $ROUNDS rounds x ${SECS}s, $CONNS connections ==="
  bash "$COMPARE" "$ROUNDS" "$SECS" "$CONNS"
}
case "$MODE" in
  plain) run plain ;;
  resilience) VEER_CONFIG_TEMPLATE=$RESILIENCE run "resilience (health checks + breakers)" ;;
  both)
    run plain
    VEER_CONFIG_TEMPLATE=$RESILIENCE run "resilience (health checks + breakers)"
    ;;
  *) echo "unknown mode $MODE (plain, resilience or both)" >&2; exit 2 ;;
esac
