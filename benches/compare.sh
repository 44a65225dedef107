#!/usr/bin/env bash
# Question: on this machine, with the same upstream, the same load and the same 90/10 split, how
# do Switchyard's throughput and latency compare with nginx and HAProxy? How much memory does
# each proxy hold per idle keep-alive connection? And does a request fail while the endpoint
# file is rewritten under full load (the full-scale run of tests/reload_under_load.rs)?
#
# Everything runs on loopback ports picked at run time. Rounds alternate between contestants, so
# drift in the machine's speed hits all of them alike. Every second round runs the list backwards,
# and each pair of rounds starts one contestant further along it, so each contestant takes every
# place in the order and follows more than one other; the table reports medians and ratios.
# Every process started here is stopped on exit.
#
#   bash benches/compare.sh                      # 5 rounds of 10 s per contestant
#   ROUNDS=3 DURATION=5 bash benches/compare.sh  # quicker
#   CONTESTANTS=switchyard ROUNDS=1 DURATION=8 IDLE_CONNECTIONS=0 RELOAD_REWRITES=0 \
#     bash benches/compare.sh                    # one contestant, e.g. while optimising
#   PEER_HEADERS=none bash benches/compare.sh    # nginx and HAProxy without the header work
#   PIN_WORKERS=1 bash benches/compare.sh        # each proxy's workers pinned to CPUs 0..N-1
#   BODY_BYTES=262144 bash benches/compare.sh    # 256 KiB request bodies, answered early
#   TLS=1 bash benches/compare.sh                # clients speak HTTPS to every proxy
#   BASELINE=/tmp/old/switchyard CONTESTANTS="switchyard baseline haproxy" \
#     bash benches/compare.sh                    # an A/B against another build, same rounds
#
# Switchyard adds X-Forwarded-For, -Proto, -Host and a request id to every request it forwards,
# and returns the request id and the deployment's name to the client. By default nginx and
# HAProxy are configured to do the same (PEER_HEADERS=same), so all three do the same work;
# PEER_HEADERS=none runs them bare, as they ship.
#
# Needs Debian's nginx, haproxy and wrk (it installs nothing itself):
#   apt-get install nginx haproxy wrk
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-2}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
# nginx and HAProxy give an idle connection's buffers back after a while: IDLE_WAIT=35 shows it.
IDLE_WAIT=${IDLE_WAIT:-1}
RELOAD_REWRITES=${RELOAD_REWRITES:-200}
PEER_HEADERS=${PEER_HEADERS:-same}
PIN_WORKERS=${PIN_WORKERS:-0}

source "$(dirname "$0")/setup.sh"
require_tools "nginx haproxy wrk" nginx haproxy wrk python3
cargo build --release --quiet --bin switchyard
SWITCHYARD=$PWD/target/release/switchyard

NGINX=$(free_port); HAPROXY=$(free_port); SWITCH=$(free_port); ADMIN=$(free_port)

start_upstream
write_nginx_conf "$NGINX" "$WORKERS"
nginx -c "$work/nginx.conf" -e stderr & pids+=($!)
NGINX_PID=$!
write_haproxy_conf "$HAPROXY" "$WORKERS"
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
HAPROXY_PID=$!
pin=()
if [ "$PIN_WORKERS" = 1 ]; then pin=(--pin-workers); fi
RUST_LOG=warn "$SWITCHYARD" serve --workers "$WORKERS" "${pin[@]}" "${switchyard_tls[@]}" \
  --config "$work/config/endpoint.yaml" --listen "127.0.0.1:$SWITCH" --admin-listen "127.0.0.1:$ADMIN" & pids+=($!)
SWITCHYARD_PID=$!
# BASELINE=PATH: another Switchyard binary, the contestant "baseline", with the same settings.
BASE=$(free_port); BASE_ADMIN=$(free_port); BASELINE_PID=""
if [ -n "${BASELINE:-}" ]; then
  mkdir -p "$work/baseline"
  cp "$work/config/endpoint.yaml" "$work/baseline/endpoint.yaml"
  RUST_LOG=warn "$BASELINE" serve --workers "$WORKERS" "${pin[@]}" "${switchyard_tls[@]}" \
    --config "$work/baseline/endpoint.yaml" --listen "127.0.0.1:$BASE" --admin-listen "127.0.0.1:$BASE_ADMIN" & pids+=($!)
  BASELINE_PID=$!
  wait_for_port "$BASE"
fi

for port in $BLUE $GREEN $NGINX $HAPROXY $SWITCH; do wait_for_port "$port"; done

declare -A PORT=([direct]=$BLUE [switchyard]=$SWITCH [nginx]=$NGINX [haproxy]=$HAPROXY [baseline]=$BASE)
# The processes doing each contestant's work (nginx's workers are its master's children), whose
# CPU time per request is a steadier comparison than throughput on a busy machine.
children() { cat "/proc/$1/task/$1/children"; }
declare -A PIDS=([direct]="$(children "$UPSTREAM_PID")" [switchyard]=$SWITCHYARD_PID
                 [nginx]="$(children "$NGINX_PID")" [haproxy]=$HAPROXY_PID [baseline]=$BASELINE_PID)
TICK_US=$((1000000 / $(getconf CLK_TCK)))
cpu_ticks() {
  local total=0 pid
  for pid in $1; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$total"
}
# The upstream speaks plain HTTP only, so with TLS=1 there is no direct run.
default_contestants="direct switchyard nginx haproxy"
if [ "$TLS" = 1 ]; then default_contestants="switchyard nginx haproxy"; fi
read -r -a CONTESTANTS <<< "${CONTESTANTS:-$default_contestants}"

# CPU time (user and system, in microseconds) of the processes this shell has waited for.
# `times` runs in this shell, not in a command substitution, which would be a shell of its own.
children_us() {
  times > "$work/times"
  awk 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%.0f\n", ((u[1] + s[1]) * 60 + u[2] + s[2]) * 1000000 }' "$work/times"
}

# One wrk run of contestant $1 for $2 seconds; prints "requests_per_s p50_ms p99_ms errors
# cpu_us_per_request peers_cpu_us_per_request": the CPU time, user and system, of the
# contestant's processes, and of the upstream and wrk together (the load generator and the
# model server share the cores with the proxy, so what a proxy makes them spend is throughput too).
measure() {
  local before after upstream_before upstream_after wrk_before wrk_after
  before=$(cpu_ticks "${PIDS[$1]}")
  upstream_before=$(cpu_ticks "${PIDS[direct]}")
  children_us > "$work/wrk_before"
  wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency -s "$work/post.lua" "$SCHEME://127.0.0.1:${PORT[$1]}/score" > "$work/wrk.out"
  children_us > "$work/wrk_after"
  wrk_before=$(cat "$work/wrk_before"); wrk_after=$(cat "$work/wrk_after")
  after=$(cpu_ticks "${PIDS[$1]}")
  upstream_after=$(cpu_ticks "${PIDS[direct]}")
  local peers_us=$(((upstream_after - upstream_before) * TICK_US + wrk_after - wrk_before))
  awk -v cpu_us=$(((after - before) * TICK_US)) -v peers_us="$peers_us" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    / requests in / { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Non-2xx/ { errors += $NF }
    /Socket errors/ { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
    END { n = requests > 0 ? requests : 1; printf "%s %.3f %.3f %d %.2f %.2f\n", rps, p50, p99, errors + 0, cpu_us / n, peers_us / n }' "$work/wrk.out"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)"
echo "load: wrk -t1 -c$CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds, $SCHEME; proxies get $WORKERS workers/threads$( [ "$PIN_WORKERS" = 1 ] && echo ', pinned to CPUs')"
for name in "${CONTESTANTS[@]}"; do measure "$name" 2 >/dev/null; done  # warm-up

: > "$work/results"
count=${#CONTESTANTS[@]}
for round in $(seq "$ROUNDS"); do
  for step in $(seq 0 $((count - 1))); do
    index=$((((round - 1) / 2 + step) % count))
    if ((round % 2 == 0)); then index=$((count - 1 - index)); fi
    name=${CONTESTANTS[$index]}
    echo "$name $(measure "$name" "$DURATION")" | tee -a "$work/results" | sed "s/^/round $round: /"
  done
done

echo "nginx and HAProxy: PEER_HEADERS=$PEER_HEADERS"
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for name, rps, p50, p99, errors, cpu, peers in rows:
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errors), float(cpu), float(peers)))
median = {name: [statistics.median(col) for col in zip(*runs)] for name, runs in by.items()}
print()
print(f"{'contestant':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs haproxy':>12}{'vs nginx':>10}"
      f"{'CPU us/req':>12}{'peers us/req':>14}")
def ratio(rps, peer):
    return f"{rps / median[peer][0]:.2f}" if peer in median else "-"
for name in [n for n in ["direct", "switchyard", "baseline", "nginx", "haproxy"] if n in median]:
    rps, p50, p99, _, cpu, peers = median[name]
    errors = sum(run[3] for run in by[name])
    # For 'direct' the upstream is the contestant: its peer is wrk alone, not shown.
    peers = "-" if name == "direct" else f"{peers:.1f}"
    print(f"{name:<12}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}"
          f"{ratio(rps, 'haproxy'):>12}{ratio(rps, 'nginx'):>10}{cpu:>12.1f}{peers:>14}")
print("(medians over rounds; errors are summed; CPU: user + system time of the contestant's")
print(" processes per request, the upstream's for 'direct'; peers: that of the upstream and wrk,")
print(" which share the cores, per request)")
EOF

# Memory: resident size of each proxy before and after IDLE_CONNECTIONS keep-alive clients have
# each sent one request and then stayed quiet for IDLE_WAIT seconds, one proxy after the other
# (MEMORY_CONTESTANTS, default all three).
if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
ulimit -n $((IDLE_CONNECTIONS * 2 + 1024)) 2>/dev/null || true
echo
for name in ${MEMORY_CONTESTANTS:-switchyard nginx haproxy}; do
python3 - "$name" "${PORT[$name]}" "${PIDS[$name]}" "$IDLE_CONNECTIONS" "$IDLE_WAIT" "$BODY" "$TLS" <<'EOF'
import asyncio, ssl, sys
name, port, pids, count, wait, body = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
tls = None
if sys.argv[7] == "1":
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
def rss_kib():
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total
request = (f"POST /score HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
async def client(held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(request)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    held.append(writer)
async def main():
    before = rss_kib()
    held = []
    quarter = None
    for start in range(0, count, 500):
        await asyncio.gather(*(client(held) for _ in range(min(500, count - start))))
        if quarter is None and len(held) >= count // 4:
            quarter = (len(held), rss_kib())
    await asyncio.sleep(wait)
    after = rss_kib()
    # The first figure includes what serving 500 requests at once left behind (buffers the
    # allocator keeps); the second is what each further idle connection adds.
    marginal = (after - quarter[1]) / max(1, len(held) - quarter[0])
    print(f"idle keep-alive connections: {len(held)} for {wait:.0f} s; {name} RSS {before / 1024:.1f} MiB -> "
          f"{after / 1024:.1f} MiB, {(after - before) / len(held):.1f} KiB per connection, "
          f"{marginal:.1f} KiB per connection past the first {quarter[0]}")
    for writer in held:
        writer.close()
    await asyncio.sleep(1)
asyncio.run(main())
EOF
done
fi

# Reload under load: the endpoint file rewritten RELOAD_REWRITES times while clients send back to
# back; the test fails on any failed request and prints the delay from write to new split.
if [ "$RELOAD_REWRITES" -gt 0 ]; then
  echo
  echo "reload under load: $RELOAD_REWRITES rewrites"
  SWITCHYARD_RELOAD_REWRITES=$RELOAD_REWRITES cargo test --release --quiet \
    --test reload_under_load -- --nocapture 2>&1 | grep -E "rewrites under load|test result|panicked"
fi
