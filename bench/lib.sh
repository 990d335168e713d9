# Shared helpers for the benchmark scripts (sourced, not run).
# Every process started here is stopped on exit, also on Ctrl-C.

BENCH_PIDS=()
BENCH_WORK=$(mktemp -d)
cleanup() {
  for pid in "${BENCH_PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$BENCH_WORK"
}
trap cleanup EXIT INT TERM

# start NAME CMD...: runs CMD in the background, waits for its
# "listening on ADDR" line, and sets ADDR.
start() {
  local name=$1; shift
  local out="$BENCH_WORK/$name.out"
  "$@" > "$out" 2> "$BENCH_WORK/$name.err" &
  BENCH_PIDS+=($!)
  for _ in $(seq 1 600); do
    ADDR=$(sed -n 's/^listening on //p' "$out" | head -n1)
    if [ -n "$ADDR" ] && (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR##*:}") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "bench: $name did not start:" >&2
  cat "$BENCH_WORK/$name.err" >&2
  exit 1
}

# oha_run LABEL OHA-ARGS...: a bounded oha run; prints one table row.
oha_run() {
  local label=$1; shift
  oha --no-tui --output-format json -z "${DURATION:-10s}" -c "${CONNECTIONS:-50}" "$@" > "$BENCH_WORK/oha.json"
  python3 - "$label" "$BENCH_WORK/oha.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# Requests still in flight when oha's deadline hits are cancelled by oha
# itself ("aborted due to deadline"); they are not failures of the server.
errors = {k: v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k}
bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errors.values())
print(f"| {label} | {s['requestsPerSec']:.0f} | {p['p50']*1000:.2f} | {p['p99']*1000:.2f} | {ok} | {bad} |")
PY
}

# wrk_run LABEL URL LUA: a bounded wrk run with a script; prints one row.
wrk_run() {
  local label=$1 url=$2 script=$3
  wrk -t1 -c"${CONNECTIONS:-50}" -d"${DURATION:-10s}" --latency -s "$script" "$url" > "$BENCH_WORK/wrk.txt"
  python3 - "$label" "$BENCH_WORK/wrk.txt" <<'PY'
import re, sys
label, text = sys.argv[1], open(sys.argv[2]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
p50 = ms(re.search(r"50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"99%\s+(\S+)", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
bad = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)
print(f"| {label} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {total - bad} | {bad} |")
PY
}

table_header() {
  echo "| scenario | req/s | p50 ms | p99 ms | ok | errors |"
  echo "|---|---|---|---|---|---|"
}

# mint_tokens N USER_ID FILE: N distinct HS256 access tokens for USER_ID,
# signed with $JWT_SECRET_KEY (as the auth service would sign them).
mint_tokens() {
  python3 - "$1" "$2" "$3" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
n, user, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
secret = os.environ["JWT_SECRET_KEY"].encode()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
with open(path, "w") as out:
    for i in range(n):
        claims = {"sub": user, "exp": now + 3600, "iat": now, "nbf": now, "jti": f"bench-{i}", "type": "access", "role": "user"}
        signing = head + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
        sig = b64(hmac.new(secret, signing, hashlib.sha256).digest())
        out.write((signing + b"." + sig).decode() + "\n")
PY
}
