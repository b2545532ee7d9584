#!/usr/bin/env bash
# Load benchmark: veer beside HAProxy, nginx and Caddy (one worker each, loopback, the same two
# nginx backends at 90/10), driven by ../shared/bench/compare.sh. Quote the medians and the
# veer/other ratios it prints, never one round's absolute figure.
#
# Usage: benches/load.sh [plain|resilience|both|access|mirror] [rounds=3] [seconds=5] [connections=64]
#   plain       the default blue/green split (compare.sh's own veer config)
#   resilience  the same with active health checks (interval 1s) and circuit breakers on
#               both pools, to compare against plain (issue 3: within 5% on rps and cpu/req)
#   both        plain, then resilience (the default)
#   access      plain with the access log off, to a file and to /dev/null, round by round
#               (issue 16: within 5% of requests/s with it on)
#   mirror      plain, then the same with every request mirrored (and compared) to a third
#               nginx, round by round (issue 19: the primary's req/s, p99 and cpu/req)
# Needs: apt-get install -y wrk haproxy nginx caddy
# Env:   COMPARE=path/to/compare.sh (default ../shared/bench/compare.sh, beside the repo)
#        NO_BUILD=1 to skip `cargo build --release`
#        VEER_BIN=path a veer binary to measure instead of target/release/veer (no build), e.g.
#                 target/pgo/veer from deploy/pgo-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}; ROUNDS=${2:-3}; SECS=${3:-5}; CONNS=${4:-64}
COMPARE=${COMPARE:-../shared/bench/compare.sh}
[ -f "$COMPARE" ] || { echo "compare script not found at $COMPARE (set COMPARE=...)" >&2; exit 1; }
for tool in wrk haproxy nginx caddy curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk haproxy nginx caddy" >&2; exit 1; }
done

# NO_BUILD=1 measures the release binary already built; VEER_BIN another binary.
if [ -z "${VEER_BIN:-}" ]; then
  [ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
  VEER_BIN=target/release/veer
fi
export VEER_BIN
export VEER_CMD_PREFIX="env VEER_WORKERS=1 VEER_LOG=warn"

# compare.sh fills in @LISTEN@, @B1@ and @B2@. The health endpoint is any path: the nginx
# backends answer 200 everywhere.
RESILIENCE=$(mktemp /tmp/veer-bench-resilience.XXXX)
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

# The plain config with an access log (JSON) to $1.
access_template() {
  local t
  t=$(mktemp /tmp/veer-bench-access.XXXX)
  printf '[server]\nlisten = ["@LISTEN@"]\nworkers = 1\n[admin]\nlisten = "127.0.0.1:18094"\n[log]\naccess = "%s"\n[pools.blue]\nbackends = ["@B1@"]\n[pools.green]\nbackends = ["@B2@"]\n[[routes]]\nname = "bench"\nsplit = { blue = 90, green = 10 }\n' "$1" >"$t"
  echo "$t"
}

# The plain config with every request mirrored to a third nginx (127.0.0.1:18083), compared.
MIRROR=$(mktemp /tmp/veer-bench-mirror.XXXX)
printf '[server]\nlisten = ["@LISTEN@"]\nworkers = 1\n[admin]\nlisten = "127.0.0.1:18094"\n[pools.blue]\nbackends = ["@B1@"]\n[pools.green]\nbackends = ["@B2@"]\n[pools.shadow]\nbackends = ["127.0.0.1:18083"]\n[[routes]]\nname = "bench"\nsplit = { blue = 90, green = 10 }\n[routes.mirror]\nto = "shadow"\npercent = 100\ncompare = true\nmax_in_flight = 1000\n' >"$MIRROR"

# One compare.sh run; its per-round lines ("ROUND NAME RPS P50 P99 CPU_US ...") are also kept,
# tagged with the mode, for the summary.
RESULTS=$(mktemp /tmp/veer-bench-results.XXXX)
SHADOW_PID=
trap 'rm -f "$RESILIENCE" "$MIRROR" "$RESULTS" "$RESULTS.run"; [ -z "$SHADOW_PID" ] || kill "$SHADOW_PID" 2>/dev/null' EXIT
run() { # MODE ROUNDS [template]
  local mode=$1 rounds=$2
  echo "=== $mode: $rounds round(s) x ${SECS}s, $CONNS connections ==="
  VEER_CONFIG_TEMPLATE=${3:-} bash "$COMPARE" "$rounds" "$SECS" "$CONNS" | tee "$RESULTS.run"
  awk -v m="$mode" '$1 ~ /^[0-9]+$/ && $3 ~ /^[0-9.]+$/ {print m, $0}' "$RESULTS.run" >>"$RESULTS"
}
case "$MODE" in
  plain) run plain "$ROUNDS" ;;
  resilience) run resilience "$ROUNDS" "$RESILIENCE" ;;
  both)
    # Alternate the two modes round by round so machine drift hits both alike.
    for _ in $(seq "$ROUNDS"); do
      run plain 1
      run resilience 1 "$RESILIENCE"
    done
    ;;
  access)
    ACCESS_FILE=$(mktemp /tmp/veer-bench-access-log.XXXX)
    T_FILE=$(access_template "$ACCESS_FILE")
    T_NULL=$(access_template /dev/null)
    for _ in $(seq "$ROUNDS"); do
      run plain 1
      run access_file 1 "$T_FILE"
      # Counted before the file is emptied (which keeps the disk out of the next round).
      echo "access log lines written in this round's access_file run: $(wc -l <"$ACCESS_FILE")"
      : >"$ACCESS_FILE"
      run access_null 1 "$T_NULL"
    done
    rm -f "$ACCESS_FILE" "$T_FILE" "$T_NULL"
    ;;
  mirror)
    # The mirror pool: a third nginx like compare.sh's backends (one worker, same body as b1,
    # so every comparison is `same`).
    SW=$(mktemp -d /tmp/veer-bench-shadow.XXXX)
    printf 'daemon off; worker_processes 1; pid %s/shadow.pid; error_log %s/shadow.err;\nevents { worker_connections 4096; }\nhttp { access_log off; keepalive_requests 1000000;\n  server { listen 127.0.0.1:18083; location / { return 200 "hello from b1\\n"; } } }\n' "$SW" "$SW" >"$SW/shadow.conf"
    nginx -c "$SW/shadow.conf" -p "$SW" & SHADOW_PID=$!
    sleep 0.3
    for _ in $(seq "$ROUNDS"); do
      run plain 1
      run mirror 1 "$MIRROR"
    done
    ;;
  *) echo "unknown mode $MODE (plain, resilience, both, access or mirror)" >&2; exit 2 ;;
esac

echo "=== every round (mode, round, target, req/s, p50, p99, cpu/req us) ==="
cat "$RESULTS"
echo "=== summary: medians over all rounds, wrk -t1 -c$CONNS -d${SECS}s ==="
python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s)', s); v = float(m.group(1))
    return v / 1000 if m.group(2) == 'us' else v * 1000 if m.group(2) == 's' else v
med = {}
for mode in dict.fromkeys(r[0] for r in rows):
    for name in dict.fromkeys(r[2] for r in rows if r[0] == mode):
        rr = [r for r in rows if r[0] == mode and r[2] == name]
        med[mode, name] = dict(n=len(rr), rps=statistics.median(float(r[3]) for r in rr),
                               p50=statistics.median(ms(r[4]) for r in rr),
                               p99=statistics.median(ms(r[5]) for r in rr),
                               cpu=statistics.median(float(r[6]) for r in rr))
print(f"{'mode':11s} {'target':8s} {'rounds':>6s} {'req/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu/req us':>10s}")
for (mode, name), m in med.items():
    cpu = f"{m['cpu']:10.2f}" if name != 'direct' else f"{'-':>10s}"
    print(f"{mode:11s} {name:8s} {m['n']:6d} {m['rps']:9.0f} {m['p50']:7.3f} {m['p99']:7.3f} {cpu}")
for mode in dict.fromkeys(k[0] for k in med):
    v = med.get((mode, 'veer'))
    if not v: continue
    for other in ('haproxy', 'nginx', 'caddy'):
        o = med.get((mode, other))
        if o:
            print(f"{mode}: veer/{other}: rps {v['rps']/o['rps']:.2f}  p99 {v['p99']/o['p99']:.2f}  cpu/req {v['cpu']/o['cpu']:.2f}")
for mode in ('access_file', 'access_null'):
    p, a = med.get(('plain', 'veer')), med.get((mode, 'veer'))
    if p and a:
        print(f"veer {mode}/plain (log off): rps {a['rps']/p['rps']:.3f}  cpu/req {a['cpu']/p['cpu']:.3f}  p99 {a['p99']/p['p99']:.3f}")
p, r = med.get(('plain', 'veer')), med.get(('mirror', 'veer'))
if p and r:
    print(f"veer mirror 100%/plain: rps {r['rps']/p['rps']:.3f}  cpu/req {r['cpu']/p['cpu']:.3f}  p99 {r['p99']/p['p99']:.3f}")
p, r = med.get(('plain', 'veer')), med.get(('resilience', 'veer'))
if p and r:
    print(f"veer resilience/plain: rps {r['rps']/p['rps']:.3f}  cpu/req {r['cpu']/p['cpu']:.3f}  p99 {r['p99']/p['p99']:.3f}")
    # Against HAProxy in the same runs, which cancels drift between rounds.
    hp, hr = med.get(('plain', 'haproxy')), med.get(('resilience', 'haproxy'))
    if hp and hr:
        print(f"  normalised by haproxy in the same runs: rps {(r['rps']/hr['rps'])/(p['rps']/hp['rps']):.3f}  cpu/req {(r['cpu']/hr['cpu'])/(p['cpu']/hp['cpu']):.3f}")
PY
