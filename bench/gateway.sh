#!/usr/bin/env bash
# The gateway in front of the echo backend, with the real auth service:
#   backend direct, public route, protected route with one cached token,
#   protected route with a new token on every request (all cache misses).
# oha cannot change a header per request, so the last scenario uses wrk with
# a script that rotates through minted tokens. Prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
cargo build --release --locked -q -p auth-service -p gateway -p echo
command -v oha >/dev/null || cargo install --locked oha
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

export JWT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
start auth env DATABASE_URL="sqlite://$BENCH_WORK/auth.db" target/release/auth-service --listen 127.0.0.1:0
AUTH=$ADDR
start echo target/release/echo --listen 127.0.0.1:0
ECHO=$ADDR
cat > "$BENCH_WORK/routes.yaml" <<YAML
auth:
  verify_url: http://$AUTH/api/verify
  cache_ttl: 60s
  cache_capacity: 1000000
upstreams:
  echo:
    servers: ["$ECHO"]
    health_check: { type: http, path: /healthz, interval: 2s }
routes:
  - { prefix: /public, upstream: echo, access: public }
  - { prefix: /api/echo, upstream: echo, access: protected }
YAML
start gateway env RUST_LOG="${RUST_LOG:-info}" target/release/gateway --config "$BENCH_WORK/routes.yaml" --listen 127.0.0.1:0
GW=$ADDR

reply=$(curl -sf "http://$AUTH/api/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"benchmark password"}')
access=$(echo "$reply" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])')
user=$(echo "$reply" | python3 -c 'import json,sys; print(json.load(sys.stdin)["user_id"])')
mint_tokens "${TOKENS:-400000}" "$user" "$BENCH_WORK/tokens.txt"
cat > "$BENCH_WORK/rotate.lua" <<LUA
local tokens, i = {}, 0
for line in io.lines("$BENCH_WORK/tokens.txt") do tokens[#tokens + 1] = line end
request = function()
  i = i + 1
  return wrk.format("GET", nil, { ["authorization"] = "Bearer " .. tokens[(i % #tokens) + 1] })
end
LUA

echo "gateway, $(nproc) cores, $(target/release/gateway --version), -c ${CONNECTIONS:-50}, ${DURATION:-10s} each, one run"
table_header
oha_run "backend direct" "http://$ECHO/x"
oha_run "public route via gateway" "http://$GW/public/x"
oha_run "protected, one cached token" -H "authorization: Bearer $access" "http://$GW/api/echo/x"
wrk_run "protected, new token every request (wrk)" "http://$GW/api/echo/x" "$BENCH_WORK/rotate.lua"
