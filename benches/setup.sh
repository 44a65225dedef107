# What compare.sh and instructions.sh share: the tools check, the build, a work directory whose
# processes are stopped on exit, loopback ports, the upstream, and the contestants' configs with
# the same 90/10 split and the same header work. Sourced, not run; the caller sets PEER_HEADERS
# (and TLS, 0 unless set) and has `set -euo pipefail`.

case "$PEER_HEADERS" in
  same | none) ;;
  *) echo "PEER_HEADERS must be same or none, not '$PEER_HEADERS'" >&2; exit 1 ;;
esac

# require_tools "package list" tool...: exits naming what is missing and how to install it.
require_tools() {
  local packages=$1 tool missing=()
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}. Install them with: apt-get install $packages" >&2
    exit 1
  fi
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

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

# wait_for_port PORT [TRIES]: 50 ms apart, 100 tries unless told.
wait_for_port() {
  for _ in $(seq "${2:-100}"); do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $1)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

# TLS=1: every contestant terminates TLS for its clients with the same self-signed certificate
# (ECDSA P-256), and clients connect with https://; the upstream stays plain.
TLS=${TLS:-0}
SCHEME=http
nginx_tls="" haproxy_tls="" switchyard_tls=()
if [ "$TLS" = 1 ]; then
  SCHEME=https
  mkdir -p "$work/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
    -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
  cat "$work/tls/cert.pem" "$work/tls/key.pem" > "$work/tls/both.pem"
  nginx_tls=" ssl; ssl_certificate $work/tls/cert.pem; ssl_certificate_key $work/tls/key.pem"
  haproxy_tls=" ssl crt $work/tls/both.pem"
  switchyard_tls=(--tls-cert "$work/tls/cert.pem" --tls-key "$work/tls/key.pem")
fi

BLUE=$(free_port); GREEN=$(free_port)
BODY='{"data": [[1,2,3,4,5,6,7,8,9,10], [10,9,8,7,6,5,4,3,2,1]]}'
mkdir -p "$work/upstream" "$work/nginx" "$work/config"

# The upstream: two "model servers" answering the sample prediction, as fast as a server can, so
# that the proxies are what is measured. One nginx worker serves both ports.
start_upstream() {
  cat > "$work/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/upstream;
  client_max_body_size 8m;
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
}

# BODY_BYTES=262144: every request carries a body of that size instead (a JSON array of zeros),
# which the upstream answers before reading, as nginx does for `return`: the large-body case.
if [ -n "${BODY_BYTES:-}" ]; then
  python3 -c "import sys; n = int(sys.argv[1]); sys.stdout.write('[' + '0,' * ((n - 3) // 2) + '0]' + ' ' * ((n - 3) % 2))" \
    "$BODY_BYTES" > "$work/body.json"
  cat > "$work/post.lua" <<EOF
local file = io.open("$work/body.json", "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
EOF
else
  cat > "$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
EOF
fi

# What Switchyard does to every request, done by the peers too unless PEER_HEADERS=none:
# X-Forwarded-For, -Proto, -Host and a request id upstream; the request id and the deployment's
# name back to the client.
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

# nginx as the gateway: split_clients on a per-request random id, upstream keep-alive; with
# PIN_WORKERS=1, one worker per CPU (worker_cpu_affinity).
# write_nginx_conf PORT WORKERS [no-master]
write_nginx_conf() {
  local master="" affinity=""
  if [ "${3:-}" = no-master ]; then master="master_process off;"; fi
  if [ "${PIN_WORKERS:-0}" = 1 ]; then affinity="worker_cpu_affinity auto;"; fi
  cat > "$work/nginx.conf" <<EOF
worker_processes $2;
$master
$affinity
daemon off;
pid $work/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 19000;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  # Large bodies (BODY_BYTES) stream through as they do in the other proxies, never to disk.
  client_max_body_size 8m;
  client_body_buffer_size 2m;
  proxy_request_buffering off;
  keepalive_requests 100000000;
  upstream blue { server 127.0.0.1:$BLUE; keepalive 128; keepalive_requests 100000000; }
  upstream green { server 127.0.0.1:$GREEN; keepalive 128; keepalive_requests 100000000; }
  split_clients "\$request_id" \$deployment { 90% blue; * green; }
  server {
    listen 127.0.0.1:$1$nginx_tls;
    location / {
      proxy_pass http://\$deployment;
      proxy_http_version 1.1;
      proxy_set_header Connection "";$nginx_headers
    }
  }
}
EOF
}

# HAProxy as the gateway: weights 90/10, connection reuse; with PIN_WORKERS=1, thread i on CPU i-1.
# write_haproxy_conf PORT THREADS
write_haproxy_conf() {
  local affinity=""
  if [ "${PIN_WORKERS:-0}" = 1 ]; then affinity="cpu-map auto:1/1-$2 0-$(($2 - 1))"; fi
  cat > "$work/haproxy.cfg" <<EOF
global
  nbthread $2
  maxconn 9000
  $affinity
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend gateway
  bind 127.0.0.1:$1$haproxy_tls$haproxy_request_headers
  default_backend deployments
backend deployments
  balance roundrobin$haproxy_response_headers
  server blue 127.0.0.1:$BLUE weight 90
  server green 127.0.0.1:$GREEN weight 10
EOF
}

# Switchyard: the same split, limits out of the way. In a directory of its own, as the gateway
# watches the file's directory.
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
