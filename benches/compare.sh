#!/usr/bin/env bash
# Question: on this machine, with the same upstream, the same load and the same 90/10 split, how
# do Switchyard's throughput and latency compare with nginx and HAProxy? How much memory does
# Switchyard hold per idle keep-alive connection? And does a request fail while the endpoint
# file is rewritten under full load (the full-scale run of tests/reload_under_load.rs)?
#
# Everything runs on loopback ports picked at run time. Rounds alternate between contestants, so
# drift in the machine's speed hits all of them alike; the table reports medians and ratios.
# Every process started here is stopped on exit.
#
#   bash benches/compare.sh                      # 5 rounds of 10 s per contestant
#   ROUNDS=3 DURATION=5 bash benches/compare.sh  # quicker
#   CONTESTANTS=switchyard ROUNDS=1 DURATION=8 IDLE_CONNECTIONS=0 RELOAD_REWRITES=0 \
#     bash benches/compare.sh                    # one contestant, e.g. while optimising
#   PEER_HEADERS=none bash benches/compare.sh    # nginx and HAProxy without the header work
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
RELOAD_REWRITES=${RELOAD_REWRITES:-200}
PEER_HEADERS=${PEER_HEADERS:-same}
case "$PEER_HEADERS" in
  same | none) ;;
  *) echo "PEER_HEADERS must be same or none, not '$PEER_HEADERS'" >&2; exit 1 ;;
esac

cd "$(dirname "$0")/.."

missing=()
for tool in nginx haproxy wrk python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}. Install them with: apt-get install nginx haproxy wrk" >&2
  exit 1
fi

cargo build --release --quiet --bin switchyard
SWITCHYARD=$PWD/target/release/switchyard

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {
  for _ in $(seq 100); do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $1)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

BLUE=$(free_port); GREEN=$(free_port)
NGINX=$(free_port); HAPROXY=$(free_port); SWITCH=$(free_port); ADMIN=$(free_port)
BODY='{"data": [[1,2,3,4,5,6,7,8,9,10], [10,9,8,7,6,5,4,3,2,1]]}'

# The upstream: two "model servers" answering the sample prediction, as fast as a server can, so
# that the proxies are what is measured. One nginx worker serves both ports.
mkdir -p "$work/upstream" "$work/nginx"
cat > "$work/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/upstream;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$BLUE;
    listen 127.0.0.1:$GREEN;
    location / { default_type application/json; return 200 '[11055.977245525679, 4503.079536107787]'; }
  }
}
EOF
nginx -c "$work/upstream.conf" -e stderr & pids+=($!)
UPSTREAM_PID=$!

# nginx as the gateway: split_clients on a per-request random id, upstream keep-alive.
nginx_headers=""
if [ "$PEER_HEADERS" = same ]; then
  nginx_headers='
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id always;
      add_header azureml-model-deployment $deployment always;'
fi
cat > "$work/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  keepalive_requests 100000000;
  upstream blue { server 127.0.0.1:$BLUE; keepalive 128; keepalive_requests 100000000; }
  upstream green { server 127.0.0.1:$GREEN; keepalive 128; keepalive_requests 100000000; }
  split_clients "\$request_id" \$deployment { 90% blue; * green; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://\$deployment;
      proxy_http_version 1.1;
      proxy_set_header Connection "";$nginx_headers
    }
  }
}
EOF
nginx -c "$work/nginx.conf" -e stderr & pids+=($!)
NGINX_PID=$!

# HAProxy as the gateway: weights 90/10, connection reuse.
haproxy_request_headers=""
haproxy_response_headers=""
if [ "$PEER_HEADERS" = same ]; then
  haproxy_request_headers='
  unique-id-format %[uuid()]
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-ID %[unique-id]
  http-response set-header X-Request-ID %[unique-id]'
  haproxy_response_headers='
  http-response set-header azureml-model-deployment %[srv_name]'
fi
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend gateway
  bind 127.0.0.1:$HAPROXY$haproxy_request_headers
  default_backend deployments
backend deployments
  balance roundrobin$haproxy_response_headers
  server blue 127.0.0.1:$BLUE weight 90
  server green 127.0.0.1:$GREEN weight 10
EOF
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
HAPROXY_PID=$!

# Switchyard: the same split, no access log, limits out of the way.
cat > "$work/endpoint.yaml" <<EOF
name: bench
auth_mode: none
traffic: {blue: 90, green: 10}
deployments:
  - name: blue
    instances: [http://127.0.0.1:$BLUE]
    request_settings: {max_concurrent_requests_per_instance: 10000}
  - name: green
    instances: [http://127.0.0.1:$GREEN]
    request_settings: {max_concurrent_requests_per_instance: 10000}
EOF
RUST_LOG=warn "$SWITCHYARD" --workers "$WORKERS" serve --config "$work/endpoint.yaml" \
  --listen "127.0.0.1:$SWITCH" --admin-listen "127.0.0.1:$ADMIN" & pids+=($!)
SWITCHYARD_PID=$!

for port in $BLUE $GREEN $NGINX $HAPROXY $SWITCH; do wait_for_port "$port"; done

cat > "$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
EOF

declare -A PORT=([direct]=$BLUE [switchyard]=$SWITCH [nginx]=$NGINX [haproxy]=$HAPROXY)
# The processes doing each contestant's work (nginx's workers are its master's children), whose
# CPU time per request is a steadier comparison than throughput on a busy machine.
children() { cat "/proc/$1/task/$1/children"; }
declare -A PIDS=([direct]="$(children "$UPSTREAM_PID")" [switchyard]=$SWITCHYARD_PID
                 [nginx]="$(children "$NGINX_PID")" [haproxy]=$HAPROXY_PID)
TICK_US=$((1000000 / $(getconf CLK_TCK)))
cpu_ticks() {
  local total=0 pid
  for pid in $1; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$total"
}
read -r -a CONTESTANTS <<< "${CONTESTANTS:-direct switchyard nginx haproxy}"

# One wrk run of contestant $1 for $2 seconds; prints "requests_per_s p50_ms p99_ms errors
# cpu_us_per_request" (the CPU time, user and system, of the contestant's processes).
measure() {
  local before after
  before=$(cpu_ticks "${PIDS[$1]}")
  wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency -s "$work/post.lua" "http://127.0.0.1:${PORT[$1]}/score" > "$work/wrk.out"
  after=$(cpu_ticks "${PIDS[$1]}")
  awk -v cpu_us=$(((after - before) * TICK_US)) '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    / requests in / { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Non-2xx/ { errors += $NF }
    /Socket errors/ { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
    END { printf "%s %.3f %.3f %d %.2f\n", rps, p50, p99, errors + 0, cpu_us / (requests > 0 ? requests : 1) }' "$work/wrk.out"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)"
echo "load: wrk -t1 -c$CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds; proxies get $WORKERS workers/threads"
for name in "${CONTESTANTS[@]}"; do measure "$name" 2 >/dev/null; done  # warm-up

: > "$work/results"
for round in $(seq "$ROUNDS"); do
  for name in "${CONTESTANTS[@]}"; do
    echo "$name $(measure "$name" "$DURATION")" | tee -a "$work/results" | sed "s/^/round $round: /"
  done
done

echo "nginx and HAProxy: PEER_HEADERS=$PEER_HEADERS"
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for name, rps, p50, p99, errors, cpu in rows:
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errors), float(cpu)))
median = {name: [statistics.median(col) for col in zip(*runs)] for name, runs in by.items()}
print()
print(f"{'contestant':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs haproxy':>12}{'vs nginx':>10}"
      f"{'CPU us/req':>12}")
def ratio(rps, peer):
    return f"{rps / median[peer][0]:.2f}" if peer in median else "-"
for name in [n for n in ["direct", "switchyard", "nginx", "haproxy"] if n in median]:
    rps, p50, p99, _, cpu = median[name]
    errors = sum(run[3] for run in by[name])
    print(f"{name:<12}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}"
          f"{ratio(rps, 'haproxy'):>12}{ratio(rps, 'nginx'):>10}{cpu:>12.1f}")
print("(medians over rounds; errors are summed; CPU: user + system time of the contestant's")
print(" processes per request, the upstream's for 'direct')")
EOF

# Memory: resident size of the gateway before and after IDLE_CONNECTIONS keep-alive clients
# have each sent one request and then gone quiet.
if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
ulimit -n $((IDLE_CONNECTIONS * 2 + 1024)) 2>/dev/null || true
python3 - "$SWITCH" "$SWITCHYARD_PID" "$IDLE_CONNECTIONS" "$BODY" <<'EOF'
import asyncio, sys
port, pid, count, body = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
request = (f"POST /score HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
async def client(held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    held.append(writer)
async def main():
    before = rss_kib()
    held = []
    for start in range(0, count, 500):
        await asyncio.gather(*(client(held) for _ in range(min(500, count - start))))
    await asyncio.sleep(1)
    after = rss_kib()
    print(f"\nidle keep-alive connections: {len(held)}; switchyard RSS {before / 1024:.1f} MiB -> "
          f"{after / 1024:.1f} MiB, {(after - before) / len(held):.1f} KiB per connection")
    for writer in held:
        writer.close()
asyncio.run(main())
EOF
fi

# Reload under load: the endpoint file rewritten RELOAD_REWRITES times while clients send back to
# back; the test fails on any failed request and prints the delay from write to new split.
if [ "$RELOAD_REWRITES" -gt 0 ]; then
  echo
  echo "reload under load: $RELOAD_REWRITES rewrites"
  SWITCHYARD_RELOAD_REWRITES=$RELOAD_REWRITES cargo test --release --quiet \
    --test reload_under_load -- --nocapture 2>&1 | grep -E "rewrites under load|test result|panicked"
fi
