#!/usr/bin/env bash
# GET /api/tasks for a user with 100 tasks, straight at the tasks service
# (as the gateway would call it, with x-user-id). DATABASE_URL selects the
# database (default: SQLite in a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
cargo build --release --locked -q -p tasks
command -v oha >/dev/null || cargo install --locked oha

DB=${DATABASE_URL:-sqlite://$BENCH_WORK/tasks.db}
start tasks env DATABASE_URL="$DB" target/release/tasks --listen 127.0.0.1:0
TASKS=$ADDR
for i in $(seq 1 100); do
  curl -sf -o /dev/null "http://$TASKS/api/tasks" -H 'x-user-id: 1' -H 'content-type: application/json' \
    -d "{\"title\":\"task number $i\"}"
done
echo "tasks service, $(nproc) cores, database ${DB%%:*}, 100 tasks, oha -c ${CONNECTIONS:-50} -z ${DURATION:-10s}"
table_header
oha_run "GET /api/tasks (newest 50)" -H 'x-user-id: 1' "http://$TASKS/api/tasks"
oha_run "GET /api/tasks?limit=100" -H 'x-user-id: 1' "http://$TASKS/api/tasks?limit=100"
