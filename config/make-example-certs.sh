#!/usr/bin/env bash
# Make throwaway self-signed certificates for config/example-tls.toml (none are committed).
# Valid 30 days for example.com and *.example.com; never use them beyond a local try.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p certs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=example.com -addext 'subjectAltName=DNS:example.com,DNS:*.example.com' \
  -keyout certs/example.key -out certs/example.crt 2>/dev/null
cp certs/example.crt certs/api.crt
cp certs/example.key certs/api.key
cp certs/example.crt certs/internal-ca.pem
echo "wrote config/certs/{example,api}.{crt,key} and internal-ca.pem"
