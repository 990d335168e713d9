#!/usr/bin/env bash
# POST /api/verify on the auth service, alone and while logins run.
# Prints a table of requests/s and latency; every load is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
cargo build --release --locked -q -p auth-service
command -v oha >/dev/null || cargo install --locked oha

export JWT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
DB=${DATABASE_URL:-sqlite://$BENCH_WORK/auth.db}
start auth env DATABASE_URL="$DB" target/release/auth-service --listen 127.0.0.1:0
AUTH=$ADDR
creds='{"email":"bench@example.com","password":"benchmark password"}'
access=$(curl -sf "http://$AUTH/api/register" -H 'content-type: application/json' -d "$creds" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])')

echo "auth-service verify, $(nproc) cores, database ${DB%%:*}, oha -c ${CONNECTIONS:-50} -z ${DURATION:-10s}"
table_header
oha_run "verify alone" -m POST -H 'content-type: application/json' -d "{\"access\":\"$access\"}" "http://$AUTH/api/verify"
# Logins (argon2id) in the background for the whole measurement.
oha --no-tui --output-format json -z 12s -c 4 -m POST -H 'content-type: application/json' -d "$creds" \
  "http://$AUTH/api/login" > "$BENCH_WORK/logins.json" &
BENCH_PIDS+=($!)
sleep 1
oha_run "verify while logins run" -m POST -H 'content-type: application/json' -d "{\"access\":\"$access\"}" "http://$AUTH/api/verify"
wait "${BENCH_PIDS[-1]}" || true
python3 - "$BENCH_WORK/logins.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"logins meanwhile: {r['summary']['requestsPerSec']:.0f}/s, p99 {r['latencyPercentiles']['p99']*1000:.1f} ms")
PY
