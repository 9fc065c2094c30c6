#!/bin/bash
# The stand-in's kafka-broker-api-versions.sh: sends a Kafka ApiVersions (v0) request to
# --bootstrap-server and succeeds when the broker answers it without error, as the real
# tool does; prints the answer's size.
set -euo pipefail
server=localhost:9092
while [ $# -gt 0 ]; do
  case $1 in --bootstrap-server) server=$2; shift 2 ;; *) shift ;; esac
done
exec 3<>"/dev/tcp/${server%:*}/${server##*:}"
# size 10 | api_key 18 | api_version 0 | correlation_id 7 | client_id null
printf '\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff' >&3
# size (4) | correlation_id (4) | error_code (2)
read -r size correlation error < <(timeout 5 head -c 10 <&3 | od -An -tu1 -w10 \
  | awk '{ print $1*16777216 + $2*65536 + $3*256 + $4, $5*16777216 + $6*65536 + $7*256 + $8, $9*256 + $10 }')
[ "${correlation:-}" = 7 ] && [ "${error:-}" = 0 ] || { echo "no ApiVersions answer from $server" >&2; exit 1; }
echo "$server: ApiVersions answered ($size bytes)"
