# Shared by benches/tls.sh and deploy/pgo-build.sh (sourced, not run): the same loopback
# setup serves both, so a change to it reaches both.

# need "apt-get hint" tool... : stop with the hint when a tool is missing.
need() {
  local hint=$1 tool; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: $hint" >&2; exit 1; }
  done
}

# ports_free port... : stop when one is taken (a leftover server there would be measured, or
# trained, instead).
ports_free() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is already in use on 127.0.0.1; stop what listens there first" >&2; exit 1
    fi
  done
}

# make_cert dir name host : dir/name.crt and dir/name.key, ECDSA P-256, for host.
make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$3" -addext "subjectAltName=DNS:$3" \
    -keyout "$1/$2.key" -out "$1/$2.crt" 2>/dev/null
}

# backend_conf dir b1 b2 : dir/backend.conf, one nginx worker answering a tiny static body on
# two ports (request bodies are read and dropped).
backend_conf() {
  cat >"$1/backend.conf" <<EOF
daemon off; worker_processes 1; pid $1/backend.pid; error_log $1/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_buffer_size 128k;
  server { listen $2; location / { return 200 "hello from b1\n"; } }
  server { listen $3; location / { return 200 "hello from b2\n"; } } }
EOF
}

# veer_conf listen tls_listen admin cert_name b1 b2 route : a one-worker veer config on
# stdout, splitting route 90/10 between pools blue (b1) and green (b2).
veer_conf() {
  cat <<EOF
[server]
listen = ["$1"]
tls_listen = ["$2"]
workers = 1
[admin]
listen = "$3"
[[tls.certificates]]
cert = "$4.crt"
key = "$4.key"
[pools.blue]
backends = ["$5"]
[pools.green]
backends = ["$6"]
[[routes]]
name = "$7"
split = { blue = 90, green = 10 }
EOF
}
