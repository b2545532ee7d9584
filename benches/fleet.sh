#!/usr/bin/env bash
# Fleet benchmark (issue 14): three veer replicas on one 3-member etcd, under load, while the
# split of route "web" changes every 200 ms through a random replica. Reports
#   - the time from a change (the API call sent) to every replica serving it (median, p99,
#     max), measured by polling the three /api/status every 2 ms;
#   - requests failed under load (must be 0);
#   - the request path's cost of fleet mode: a single-mode veer with the same pools and
#     routes, loaded the same way in the same run, given the same split changes and the same
#     status polling (must be within noise: the store is never on the request path).
#
# Usage: benches/fleet.sh [seconds=20] [changes_every_ms=200]
# Needs: apt-get install -y etcd-server etcd-client nginx wrk python3 curl
# Env:   VEER_BIN=path  the veer binary (default: target/release/veer, built unless NO_BUILD=1)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-20}; EVERY=${2:-200}
# shellcheck source=benches/common.sh
. benches/common.sh
need "apt-get install -y etcd-server etcd-client nginx wrk python3 curl" etcd etcdctl nginx wrk python3 curl
if [ -z "${VEER_BIN:-}" ]; then
  [ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
  VEER_BIN=target/release/veer
fi
B1=127.0.0.1:28381; B2=127.0.0.1:28382
EC=(23791 23792 23793); EP=(23801 23802 23803)
PX=(28391 28392 28393); AD=(28394 28395 28396); PS=28397; AS=28398
ports_free 28381 28382 "${EC[@]}" "${EP[@]}" "${PX[@]}" "${AD[@]}" $PS $AS
W=$(mktemp -d -t veer-fleet.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

backend_conf "$W" $B1 $B2
nginx -c "$W/backend.conf" -p "$W" & pids+=($!)

initial=""
for i in 0 1 2; do initial+="${initial:+,}m$i=http://127.0.0.1:${EP[$i]}"; done
for i in 0 1 2; do
  etcd --name m$i --data-dir "$W/m$i" \
    --listen-client-urls http://127.0.0.1:${EC[$i]} --advertise-client-urls http://127.0.0.1:${EC[$i]} \
    --listen-peer-urls http://127.0.0.1:${EP[$i]} --initial-advertise-peer-urls http://127.0.0.1:${EP[$i]} \
    --initial-cluster "$initial" --initial-cluster-token "bench-$$" --initial-cluster-state new \
    --logger zap --log-level warn 2>"$W/m$i.log" & pids+=($!)
done
ENDPOINTS="\"http://127.0.0.1:${EC[0]}\", \"http://127.0.0.1:${EC[1]}\", \"http://127.0.0.1:${EC[2]}\""
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:${EC[0]}/health" | grep -q true && break; sleep 0.1
done

fleet_doc() {
  cat <<EOF
[pools.blue]
backends = ["$B1"]
[pools.green]
backends = ["$B2"]
[[routes]]
name = "web"
split = { blue = 90, green = 10 }
EOF
}
for i in 0 1 2; do
  { printf '[server]\nlisten = ["127.0.0.1:%s"]\nworkers = 1\n[admin]\nlisten = "127.0.0.1:%s"\n' "${PX[$i]}" "${AD[$i]}"
    printf '[cluster]\netcd = [%s]\nprefix = "/veer/bench"\nnode = "r%s"\nlease_ttl = "5s"\n' "$ENDPOINTS" "$i"
    fleet_doc; } >"$W/r$i.toml"
done
{ printf '[server]\nlisten = ["127.0.0.1:%s"]\nworkers = 1\n[admin]\nlisten = "127.0.0.1:%s"\n' $PS $AS; fleet_doc; } >"$W/single.toml"
for f in r0 r1 r2 single; do
  VEER_LOG=warn "$VEER_BIN" run --config "$W/$f.toml" 2>"$W/$f.log" & pids+=($!)
done
for a in "${AD[@]}" $AS; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$a/readyz" >/dev/null && break; sleep 0.1; done
done

# Load on every replica and on the single-mode veer at once, while the splits change.
loads=()
for i in 0 1 2; do
  wrk -t1 -c16 -d"${DUR}s" --latency "http://127.0.0.1:${PX[$i]}/" >"$W/wrk-r$i.txt" & loads+=($!)
done
wrk -t1 -c16 -d"${DUR}s" --latency "http://127.0.0.1:$PS/" >"$W/wrk-single.txt" & loads+=($!)
python3 - "$DUR" "$EVERY" $AS "${AD[@]}" >"$W/changes.txt" <<'PY'
import json, random, sys, time, urllib.request
dur, every, single, admins = float(sys.argv[1]), int(sys.argv[2]) / 1000, sys.argv[3], sys.argv[4:]
def call(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())
lags, failed_changes = [], 0
end = time.monotonic() + dur - 1
while time.monotonic() < end:
    g = random.randint(1, 99)
    t0 = time.monotonic()
    try:
        call(random.choice(admins), "PUT", "/api/routes/web/split", {"blue": 100 - g, "green": g})
    except Exception:
        failed_changes += 1
        continue
    # The single-mode veer gets the same change and the same polling, so the two sides of
    # the comparison differ only in the store.
    call(single, "PUT", "/api/routes/web/split", {"blue": 100 - g, "green": g})
    pending = set(admins)
    while pending and time.monotonic() - t0 < 5:
        call(single, "GET", "/api/status")
        for a in list(pending):
            if call(a, "GET", "/api/status")["routes"][0]["split"].get("green") == g:
                pending.discard(a)
        time.sleep(0.002)
    if pending:
        failed_changes += 1
    else:
        lags.append((time.monotonic() - t0) * 1000)
    time.sleep(max(0, every - (time.monotonic() - t0)))
lags.sort()
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")
print(f"changes: {len(lags)} served by all 3 replicas, {failed_changes} not")
print(f"change -> all replicas serving it: median {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {(lags[-1] if lags else float('nan')):.1f} ms")
PY
wait "${loads[@]}" || true

echo "== fleet benchmark: $DUR s, a split change every $EVERY ms through a random replica"
cat "$W/changes.txt"
summary() { # file label
  local reqs errs non2xx p50 p99
  reqs=$(awk '/Requests\/sec/ {print $2}' "$1")
  errs=$(awk '/Socket errors/ {s=0; for (i=3;i<=NF;i++) { v=$i; gsub(/,/, "", v); if (v ~ /^[0-9]+$/) s+=v }; print s}' "$1")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$1")
  p50=$(awk '$1=="50%" {print $2}' "$1"); p99=$(awk '$1=="99%" {print $2}' "$1")
  printf '%-24s %10s req/s  p50 %8s  p99 %8s  failed %s\n' "$2" "$reqs" "$p50" "$p99" "$(( ${errs:-0} + ${non2xx:-0} ))"
}
for i in 0 1 2; do summary "$W/wrk-r$i.txt" "fleet replica r$i"; done
summary "$W/wrk-single.txt" "single mode (same run)"
