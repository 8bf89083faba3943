#!/usr/bin/env bash
# Makes a throwaway CA and certificates for trying TLS locally and for benchmarks
# (never for production): nothing is checked in, run it when you need them.
#
#   tests/make-certs.sh DIR [CLIENT_CN]
#
# DIR gets ca.pem/ca.key, server.pem/server.key (CN localhost, SANs localhost and
# 127.0.0.1) and client.pem/client.key (CN CLIENT_CN, default bench-client), P-256
# keys, valid 30 days. Then, e.g.:
#   tidelogd --tls-cert DIR/server.pem --tls-key DIR/server.key [--tls-client-ca DIR/ca.pem]
#   tidelog --server https://127.0.0.1:7420 --ca-file DIR/ca.pem [--cert DIR/client.pem --key DIR/client.key] topic list
set -euo pipefail
dir="${1:?usage: tests/make-certs.sh DIR [CLIENT_CN]}"
client_cn="${2:-bench-client}"
command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 30 -subj "/CN=tidelog-dev-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
issue() { # NAME CN EXTENSIONS
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -out "$1.pem" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
issue client "$client_cn" "extendedKeyUsage=clientAuth\n"
chmod 600 ./*.key
echo "made $(pwd)/{ca,server,client}.{pem,key}"
