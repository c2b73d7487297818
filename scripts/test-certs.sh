#!/usr/bin/env bash
# Throwaway certificates for the remote transport's TLS, for tests and
# benchmarks (valid 2 days; nothing of them is committed):
#
#   scripts/test-certs.sh DIR CA NAME...
#
# makes DIR/CA.pem + DIR/CA.key (a self-signed CA) unless they exist, and for
# each NAME a key DIR/NAME.key and a certificate DIR/NAME.pem signed by CA,
# for IP 127.0.0.1 and DNS localhost (and any $SAN, e.g. "IP:10.0.0.1").
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 DIR CA NAME..." >&2; exit 2; }
dir=$1 ca=$2
shift 2
mkdir -p "$dir"
san="subjectAltName=IP:127.0.0.1,DNS:localhost${SAN:+,$SAN}"
printf '%s\n' "$san" >"$dir/$ca.san.cnf"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
quiet() { "$@" 2>"$dir/openssl.err" || { cat "$dir/openssl.err" >&2; exit 1; }; }
if [[ ! -f $dir/$ca.pem ]]; then
  quiet openssl req -x509 "${ec[@]}" -keyout "$dir/$ca.key" -out "$dir/$ca.pem" -days 2 -subj "/CN=$ca"
fi
for name in "$@"; do
  quiet openssl req "${ec[@]}" -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name"
  quiet openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.pem" -CAkey "$dir/$ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/$ca.san.cnf" -out "$dir/$name.pem"
  chmod 600 "$dir/$name.key"
done
