#!/usr/bin/env bash
# Portcullis against Nginx, HAProxy and Caddy in front of the same backend,
# side by side: builds the release binaries, installs the tools that are
# missing (oha with cargo, nginx, haproxy, caddy and wrk with apt-get), then
# runs bench/compare.py, which writes bench/results/<date>-<machine>.md and
# .svg. DURATION (10s), CONNECTIONS (50) and ROUNDS (3) tune the loads;
# PLACEMENTS (pinned,shared) chooses where servers and load run;
# BASELINE_GATEWAY=path adds an earlier gateway build beside this one, and
# QUICK=1 keeps only the gateway's public and protected rows and the floor;
# SCENARIOS="a;b" keeps only the gateway's rows of those scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
./run deps
cargo build --release --locked -q -p auth-service -p gateway -p echo -p floor
command -v oha >/dev/null || cargo install --locked oha
missing=()
for tool in nginx haproxy caddy wrk taskset; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  packages=("${missing[@]/taskset/util-linux}")
  echo "bench: installing ${packages[*]}" >&2
  $sudo apt-get update -qq
  # The packages' own services are not wanted: the harness starts its own.
  RUNLEVEL=1 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  for service in nginx haproxy caddy; do
    $sudo systemctl stop "$service" 2>/dev/null || $sudo service "$service" stop 2>/dev/null || true
  done
fi
# Debian's Python: ./run deps installs the modules the harness uses.
exec /usr/bin/python3 bench/compare.py
