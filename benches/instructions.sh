#!/usr/bin/env bash
# Question: how many instructions does each proxy spend in user space on one request? Unlike
# requests per second, the count hardly moves with the machine's load (two runs of the same
# build differ by well under 1%), so it shows what a code change bought even on a busy machine.
#
# Each contestant runs under valgrind's callgrind with one worker (Switchyard --workers 1,
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
case "$PEER_HEADERS" in
  same | none) ;;
  *) echo "PEER_HEADERS must be same or none, not '$PEER_HEADERS'" >&2; exit 1 ;;
esac
COUNTED=${COUNTED:-8}
read -r -a CONTESTANTS <<< "${CONTESTANTS:-switchyard nginx haproxy}"

cd "$(dirname "$0")/.."

missing=()
for tool in nginx haproxy wrk valgrind callgrind_control callgrind_annotate python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}. Install them with: apt-get install nginx haproxy wrk valgrind" >&2
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
  for _ in $(seq 400); do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $1)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

BLUE=$(free_port); GREEN=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)
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
wait_for_port "$BLUE"

cat > "$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"data": [[1,2,3,4,5,6,7,8,9,10], [10,9,8,7,6,5,4,3,2,1]]}'
wrk.headers["Content-Type"] = "application/json"
EOF

nginx_headers=""
haproxy_request_headers=""
haproxy_response_headers=""
if [ "$PEER_HEADERS" = same ]; then
  nginx_headers='
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id always;
      add_header azureml-model-deployment $deployment always;'
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

cat > "$work/nginx.conf" <<EOF
worker_processes 1;
master_process off;
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
    listen 127.0.0.1:$PROXY;
    location / {
      proxy_pass http://\$deployment;
      proxy_http_version 1.1;
      proxy_set_header Connection "";$nginx_headers
    }
  }
}
EOF

cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend gateway
  bind 127.0.0.1:$PROXY$haproxy_request_headers
  default_backend deployments
backend deployments
  balance roundrobin$haproxy_response_headers
  server blue 127.0.0.1:$BLUE weight 90
  server green 127.0.0.1:$GREEN weight 10
EOF

mkdir -p "$work/config"
cat > "$work/config/endpoint.yaml" <<EOF
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

count() {
  local name=$1; shift
  local out="$work/callgrind.$name"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
    2> "$work/valgrind.$name.log" &
  local pid=$!
  wait_for_port "$PROXY"
  wrk -t1 -c16 -d3s -s "$work/post.lua" "http://127.0.0.1:$PROXY/score" > /dev/null
  callgrind_control -i on "$pid" > /dev/null
  local requests
  requests=$(wrk -t1 -c16 -d"${COUNTED}s" -s "$work/post.lua" "http://127.0.0.1:$PROXY/score" |
    awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" > /dev/null
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
      count switchyard "$SWITCHYARD" --workers 1 serve \
        --config "$work/config/endpoint.yaml" --listen "127.0.0.1:$PROXY" \
        --admin-listen "127.0.0.1:$ADMIN" ;;
    nginx) count nginx nginx -c "$work/nginx.conf" -e stderr ;;
    haproxy) count haproxy haproxy -f "$work/haproxy.cfg" -db ;;
    *) echo "unknown contestant: $name" >&2; exit 1 ;;
  esac
done
