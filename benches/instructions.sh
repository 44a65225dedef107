#!/usr/bin/env bash
# Question: how many instructions does each proxy spend in user space on one request? Unlike
# requests per second, the count hardly moves with the machine's load (two runs of the same
# build differ by well under 1%), so it shows what a code change bought even on a busy machine.
#
# Each contestant runs under valgrind's callgrind with one worker (`switchyard serve --workers 1`,
# nginx with one worker and no master, HAProxy with one thread), behind the same upstream as
# benches/compare.sh and with the same 90/10 split and the same header work (PEER_HEADERS as
# there). Counting starts after a warm-up; the count divided by the requests wrk completed in the
# counted stretch is printed. Kernel time is not included: for that, see compare.sh's CPU column.
#
#   bash benches/instructions.sh                         # all three
#   CONTESTANTS=switchyard bash benches/instructions.sh  # one
#
# Needs Debian's nginx, haproxy, wrk and valgrind (it installs nothing itself):
#   apt-get install nginx haproxy wrk valgrind
set -euo pipefail

PEER_HEADERS=${PEER_HEADERS:-same}
export RUST_LOG=warn
COUNTED=${COUNTED:-8}
read -r -a CONTESTANTS <<< "${CONTESTANTS:-switchyard nginx haproxy}"

source "$(dirname "$0")/setup.sh"
require_tools "nginx haproxy wrk valgrind" \
  nginx haproxy wrk valgrind callgrind_control callgrind_annotate python3
cargo build --release --quiet --bin switchyard
SWITCHYARD=$PWD/target/release/switchyard

PROXY=$(free_port); ADMIN=$(free_port)
start_upstream
wait_for_port "$BLUE"
write_nginx_conf "$PROXY" 1 no-master
write_haproxy_conf "$PROXY" 1

count() {
  local name=$1; shift
  local out="$work/callgrind.$name"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
    2> "$work/valgrind.$name.log" &
  local pid=$!
  # Slow to start under valgrind.
  wait_for_port "$PROXY" 400
  wrk -t1 -c16 -d3s -s "$work/post.lua" "http://127.0.0.1:$PROXY/score" > /dev/null
  callgrind_control -i on "$pid" > /dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c16 -d"${COUNTED}s" -s "$work/post.lua" "http://127.0.0.1:$PROXY/score" |
    awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" > /dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local instructions
  instructions=$(callgrind_annotate "$out.1" 2>/dev/null |
    awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
  python3 -c "print(f'{\"$name\":<12}{$requests:>10}{$instructions / $requests:>16,.0f}')"
  # Let the port go before the next contestant binds it.
  sleep 1
}

echo "user-space instructions per request (callgrind, one worker each; PEER_HEADERS=$PEER_HEADERS)"
printf '%-12s%10s%16s\n' contestant requests instructions
for name in "${CONTESTANTS[@]}"; do
  case "$name" in
    switchyard)
      count switchyard "$SWITCHYARD" serve --workers 1 \
        --config "$work/config/endpoint.yaml" --listen "127.0.0.1:$PROXY" \
        --admin-listen "127.0.0.1:$ADMIN" ;;
    nginx) count nginx nginx -c "$work/nginx.conf" -e stderr ;;
    haproxy) count haproxy haproxy -f "$work/haproxy.cfg" -db ;;
    *) echo "unknown contestant: $name" >&2; exit 1 ;;
  esac
done
