#!/usr/bin/env bash
# `make bench`: every benchmark under bench/, each measuring its baseline in the same run, on PostgreSQL and
# Redis started here (durable settings, as in production). Output: the terminal and var/bench/<name>.txt.
# `make bench ONLY="twin_kme qrng_api"` runs a subset; BENCH_ARGS_<name> adds arguments to one benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

install_debs postgresql redis-server curl stunnel4 openssl
make --no-print-directory venv
start_services bench
OUT="$(pwd)/var/bench"
mkdir -p "$OUT"
ALL="twin_bringup twin_kme gateway_overhead gateway_concurrency etsi004_streams qrng_health qrng_stream qrng_api
     protocol_throughput ipsec_tunnels tls_sessions scale_out"
for name in ${ONLY:-$ALL}; do
  args_var="BENCH_ARGS_$name"
  echo "== bench/$name.py ${!args_var:-}"
  # shellcheck disable=SC2086 # word splitting of the extra arguments is intended
  .venv/bin/python "bench/$name.py" ${!args_var:-} 2>&1 | tee "$OUT/$name.txt"
done
echo "== results in $OUT/"
