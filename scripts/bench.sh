#!/usr/bin/env bash
# Benchmark: what the gateway costs compared with a direct call and with a plain Nginx hop,
# all on loopback, all in front of the same stand-in Ollama (fast mode, canned answers).
#
#   scripts/bench.sh            full run (release build, ~5 minutes), results in target/bench/
#   scripts/bench.sh --smoke    seconds-long run of every step (debug build), for CI
#   scripts/bench.sh fleet      the fleet benchmark (scripts/bench-fleet.sh)
#
# Systems: (a) direct to the stand-in's /api/chat, (b) a plain Nginx hop (1 worker, upstream
# keepalive), (c) the gateway with every guard on (key, IP allowlist, a rate limit too high to
# trip, translation, audit log), (d) Nginx in front of the gateway, and (e) the framework floor:
# tools/src/bin/bare-proxy.rs, the cheapest actix-web + awc pass-through (no guards, no translation),
# and (f) the gateway's native /api/chat: every guard, no translation (target: >= 85% of the
# floor's requests per second). The system under test is pinned to CPU 1, the load generator and the stand-in to CPU 0.
# Saturation runs in interleaved rounds (every system once per round) and reports medians,
# so a slow spell of the shared host hits every system alike. Ratios are the figures that
# count. Prints a markdown table and writes results.json.
set -euo pipefail
# `scripts/bench.sh fleet [--smoke]`: the fleet benchmark (several hosts, several gateways).
[ "${1:-}" = fleet ] && exec "$(dirname "$0")/bench-fleet.sh" "${@:2}"
cd "$(dirname "$0")/.."
repo=$PWD

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ $SMOKE = 1 ]; then
  PROFILE=debug; DUR=1; ROUNDS=1; LAT_N=200; STREAMS=(1 10); HOLDS=(50); RELOADS=2
else
  PROFILE=release; DUR=10; ROUNDS=5; LAT_N=5000; STREAMS=(1 100 1000); HOLDS=(1000 5000); RELOADS=10
fi
ROUND_DUR=$(( DUR > 4 ? 4 : DUR ))
CONNS=64
OUT=${BENCH_OUT:-$repo/target/bench}
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for tool in wrk nginx taskset python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    echo "bench.sh: $tool is missing (apt-get install wrk nginx util-linux python3)" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ $PROFILE = release ]; then cargo build --release --locked --workspace --bins; else cargo build --locked --workspace --bins; fi
BIN=$repo/target/$PROFILE

if [ "$(nproc)" -ge 2 ]; then LOAD="taskset -c 0"; SUT="taskset -c 1"; else LOAD=; SUT=; fi

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
log() { printf '%s\n' "$*" >&2; }

# Starts a stand-in; sets FAKE_ADDR and FAKE_PID (no command substitution: the background
# process must stay a child of this shell so cleanup can stop it).
start_fake() { # extra args...
  local f="$work/fake.$RANDOM"
  $LOAD "$BIN/fake-ollama" --listen 127.0.0.1:0 --fast --workers 1 "$@" > "$f" 2>/dev/null &
  FAKE_PID=$!
  pids+=($FAKE_PID)
  for _ in $(seq 200); do [ -s "$f" ] && break; sleep 0.05; done
  FAKE_ADDR=$(awk '{print $3}' "$f")
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { # pids... -> utime+stime summed
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
TICK=$(getconf CLK_TCK)

start_fake --chunks 50 --chunk-delay-ms 20
FAKE=$FAKE_ADDR; FAKE_MAIN_PID=$FAKE_PID
log "stand-in Ollama: $FAKE"

# (b) plain Nginx hop. Sets NGX_DIR.
start_nginx() { # name listen_port upstream
  local d="$work/nginx-$1"
  NGX_DIR=$d
  mkdir -p "$d"
  cat > "$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log error;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  upstream up { server $3; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_buffering off;
    }
  }
}
EOF
  $SUT "$NGINX" -p "$d" -c "$d/nginx.conf" > /dev/null 2>&1 &
  pids+=($!)
}
wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
nginx_pids() { local master; master=$(cat "$1/nginx.pid"); echo "$master $(pgrep -P "$master" | tr '\n' ' ')"; }

HOP_PORT=$(free_port)
start_nginx hop "$HOP_PORT" "$FAKE"; HOP_DIR=$NGX_DIR
wait_port "$HOP_PORT"

# (e) the framework floor.
$SUT "$BIN/bare-proxy" 127.0.0.1:0 "$FAKE" > "$work/bare.out" 2>/dev/null &
BARE_PID=$!
pids+=($BARE_PID)
for _ in $(seq 200); do [ -s "$work/bare.out" ] && break; sleep 0.05; done
BARE=$(awk '{print $3}' "$work/bare.out")

KEY=bench-key-0123456789
# Every guard on: key, allowlist, a limit too high to trip (100k per second), the fair queue
# and token quotas (never binding), audit log.
gateway_policy() { # file upstream audit(on|off) [max_requests] [idle] [quotas(on|off)]
  cat > "$1" <<EOF
listen: "127.0.0.1:0"
ollama_api: "http://$2"
log_level: info
auth: {enabled: true, keys: [{id: bench, key: "$KEY"}]}
whitelist: {enabled: true, ips: ["127.0.0.1"]}
rate_limit: {enabled: true, max_requests: ${4:-100000}, window_seconds: 1}
# The fair queue is on but never full: the stand-in is no GPU, and the stream rows hold
# thousands of streams at once; this measures what the queue costs per request.
upstream: {stream_idle_timeout_seconds: ${5:-60}, max_in_flight: 10000}
queue: {max_waiting: 10000}
EOF
  # Token quotas on too, too large to trip: every request reserves and settles.
  [ "${6:-on}" = on ] && echo "token_limit: {tokens_per_minute: 1000000000000}" >> "$1"
  [ "$3" = on ] && echo "audit: {dir: \"$(dirname "$1")/audit\"}" >> "$1"
  return 0
}
# Starts a gateway; sets GW_PID and GW_ADDR.
start_gateway() { # policy-file
  local err="$1.stderr"
  $SUT "$BIN/qwen-gateway" --workers 1 --config "$1" 2> "$err" &
  GW_PID=$!
  pids+=($GW_PID)
  GW_ADDR=
  for _ in $(seq 200); do
    GW_ADDR=$(grep -o 'addr=[0-9.:]*' "$err" 2>/dev/null | head -1 | cut -d= -f2 || true)
    [ -n "$GW_ADDR" ] && break
    sleep 0.05
  done
  [ -n "$GW_ADDR" ] || { cat "$err" >&2; exit 1; }
}

mkdir -p "$work/gw"
gateway_policy "$work/gw/policy.yaml" "$FAKE" on
start_gateway "$work/gw/policy.yaml"
GW_MAIN_PID=$GW_PID; GW_MAIN=$GW_ADDR
IDLE_RSS_KB=$(rss_kb "$GW_MAIN_PID")
log "gateway: $GW_MAIN (idle RSS ${IDLE_RSS_KB} kB)"

FRONT_PORT=$(free_port)
start_nginx front "$FRONT_PORT" "$GW_MAIN"; FRONT_DIR=$NGX_DIR
wait_port "$FRONT_PORT"

# Bodies: Ollama-native for (a)/(b), OpenAI for (c)/(d); same prompt.
printf '%s' '{"model":"qwen3:32b","messages":[{"role":"user","content":"Capital of France?"}],"stream":false}' > "$work/native.json"
printf '%s' '{"model":"qwen3:32b","messages":[{"role":"user","content":"Capital of France?"}],"stream":true}' > "$work/native-stream.json"
printf '%s' '{"model":"qwen3:32b","messages":[{"role":"user","content":"Capital of France?"}]}' > "$work/openai.json"
printf '%s' '{"model":"qwen3:32b","messages":[{"role":"user","content":"Capital of France?"}],"stream":true}' > "$work/openai-stream.json"

# name addr path body auth pids-function
declare -A ADDR PATHS BODY AUTH
ADDR[direct]=$FAKE;                     PATHS[direct]=/api/chat;            BODY[direct]=native;  AUTH[direct]=
ADDR[nginx_hop]=127.0.0.1:$HOP_PORT;    PATHS[nginx_hop]=/api/chat;         BODY[nginx_hop]=native; AUTH[nginx_hop]=
ADDR[bare_actix]=$BARE;                 PATHS[bare_actix]=/api/chat;        BODY[bare_actix]=native; AUTH[bare_actix]=
ADDR[gateway]=$GW_MAIN;                 PATHS[gateway]=/v1/chat/completions; BODY[gateway]=openai; AUTH[gateway]="X-Api-Key: $KEY"
ADDR[nginx_gateway]=127.0.0.1:$FRONT_PORT; PATHS[nginx_gateway]=/v1/chat/completions; BODY[nginx_gateway]=openai; AUTH[nginx_gateway]="X-Api-Key: $KEY"
# The gateway's native /api/chat: every guard, no translation (a guarded pass-through).
ADDR[gateway_native]=$GW_MAIN;          PATHS[gateway_native]=/api/chat;    BODY[gateway_native]=native; AUTH[gateway_native]="Authorization: Bearer $KEY"
sut_pids() {
  case $1 in
    direct) echo "$FAKE_MAIN_PID" ;;
    nginx_hop) nginx_pids "$HOP_DIR" ;;
    bare_actix) echo "$BARE_PID" ;;
    gateway|gateway_native) echo "$GW_MAIN_PID" ;;
    nginx_gateway) echo "$(nginx_pids "$FRONT_DIR") $GW_MAIN_PID" ;;
    gateway_noaudit|gateway_audit|gateway_noquota) echo "${GW_PIDS[$1]}" ;;
  esac
}

bench_args() { # system -> qwen-bench target args
  local s=$1
  printf -- '--addr %s --path %s --body %s' "${ADDR[$s]}" "${PATHS[$s]}" "$work/${BODY[$s]}.json"
}

wrk_lua() { # system -> lua file
  local f="$work/$1.lua"
  python3 - "$work/${BODY[$1]}.json" "${AUTH[$1]}" > "$f" <<'PY'
import json, sys
body = open(sys.argv[1]).read()
print('wrk.method = "POST"')
print('wrk.body = ' + json.dumps(body))
print('wrk.headers["Content-Type"] = "application/json"')
if sys.argv[2]:
    k, v = sys.argv[2].split(": ", 1)
    print(f'wrk.headers[{json.dumps(k)}] = {json.dumps(v)}')
PY
  echo "$f"
}

RES="$work/results.txt"
: > "$RES"
put() { echo "$1=$2" >> "$RES"; }

run_wrk() { # system duration -> sets RPS, REQS, NON2XX, CPU_US
  local s=$1 d=$2 lua pids before after
  lua=$(wrk_lua "$s")
  read -r -a pids_arr <<< "$(sut_pids "$s")"
  before=$(cpu_ticks "${pids_arr[@]}")
  local out
  out=$($LOAD wrk -t1 -c"$CONNS" -d"${d}s" -s "$lua" "http://${ADDR[$s]}${PATHS[$s]}" 2>&1)
  after=$(cpu_ticks "${pids_arr[@]}")
  RPS=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
  REQS=$(awk '/requests in/ {print $1}' <<< "$out")
  NON2XX=$(awk '/Non-2xx/ {print $5}' <<< "$out"); NON2XX=${NON2XX:-0}
  local errs; errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<< "$out"); NON2XX=$((NON2XX + ${errs:-0}))
  CPU_US=$(python3 -c "print(round(($after-$before)/$TICK*1e6/max(1,${REQS:-0}),2))")
}

SYSTEMS=(direct nginx_hop bare_actix gateway nginx_gateway gateway_native)
log "== non-stream: latency at 1 connection"
for s in "${SYSTEMS[@]}"; do
  hdr=()
  [ -n "${AUTH[$s]}" ] && hdr=(--header "${AUTH[$s]}")
  # shellcheck disable=SC2046
  lat=$($LOAD "$BIN/qwen-bench" latency $(bench_args "$s") "${hdr[@]}" --requests "$LAT_N" --warmup $((LAT_N / 10)))
  put "$s.latency" "$lat"
  log "$s: latency $lat"
done
log "== non-stream: saturation at $CONNS connections, $ROUNDS interleaved rounds of ${ROUND_DUR}s"
for r in $(seq "$ROUNDS"); do
  for s in "${SYSTEMS[@]}"; do
    run_wrk "$s" "$ROUND_DUR"
    put "$s.round$r" "{\"rps\": ${RPS:-0}, \"cpu_us\": ${CPU_US}, \"requests\": ${REQS:-0}, \"errors\": ${NON2XX}}"
    log "round $r $s: ${RPS} req/s, ${CPU_US} us CPU/req, errors $NON2XX"
  done
done
put gateway.idle_rss_kb "$IDLE_RSS_KB"
put gateway.loaded_rss_kb "$(rss_kb "$GW_MAIN_PID")"

log "== streaming: 50 chunks x 20 ms"
# "1w": one stream measured on a connection that already carried one (keep-alive, as the
# gateway behind Nginx sees its traffic); the others open a connection per stream.
for label in "${STREAMS[@]}" 1w; do
  n=${label%w}
  warm=(); [ "$label" != "$n" ] && warm=(--warm)
  # Small counts get more rounds, for percentiles over more than a handful of samples.
  rounds=$(( n >= 1000 ? 1 : (n >= 100 ? 3 : 20) ))
  [ $SMOKE = 1 ] && rounds=1
  d=$($LOAD "$BIN/qwen-bench" stream --addr "$FAKE" --path /api/chat --body "$work/native-stream.json" --streams "$n" --expect 50 --rounds "$rounds" "${warm[@]}")
  h=$($LOAD "$BIN/qwen-bench" stream --addr "127.0.0.1:$HOP_PORT" --path /api/chat --body "$work/native-stream.json" --streams "$n" --expect 50 --rounds "$rounds" "${warm[@]}")
  g=$($LOAD "$BIN/qwen-bench" stream --addr "$GW_MAIN" --path /v1/chat/completions --body "$work/openai-stream.json" --header "X-Api-Key: $KEY" --streams "$n" --expect 50 --rounds "$rounds" "${warm[@]}")
  put "stream$label.direct" "$d"; put "stream$label.nginx_hop" "$h"; put "stream$label.gateway" "$g"
  log "$label streams: direct $d"; log "$label streams: nginx hop $h"; log "$label streams: gateway $g"
done

log "== idle streams: memory per held stream"
start_fake --chunks 50 --chunk-delay-ms 600000
SLOW=$FAKE_ADDR
mkdir -p "$work/hold"
gateway_policy "$work/hold/policy.yaml" "$SLOW" off 100000 600
start_gateway "$work/hold/policy.yaml"
HOLD_PID=$GW_PID; HOLD_ADDR=$GW_ADDR
# Warm up allocator and pools with a few streams first.
$LOAD "$BIN/qwen-bench" hold --addr "$HOLD_ADDR" --body "$work/openai-stream.json" --header "X-Api-Key: $KEY" --streams 20 --seconds 0.2 > /dev/null
base=$(rss_kb "$HOLD_PID")
put hold.base_rss_kb "$base"
for n in "${HOLDS[@]}"; do
  fifo="$work/hold.$n"
  $LOAD "$BIN/qwen-bench" hold --addr "$HOLD_ADDR" --body "$work/openai-stream.json" --header "X-Api-Key: $KEY" --streams "$n" --seconds 3 > "$fifo" &
  hp=$!
  for _ in $(seq 600); do grep -q held "$fifo" 2>/dev/null && break; sleep 0.05; done
  held=$(python3 -c "import json;print(json.loads(open('$fifo').readline())['held'])")
  rss=$(rss_kb "$HOLD_PID")
  per=$(python3 -c "print(round(($rss-$base)*1024/max(1,$held)))")
  put "hold$n.held" "$held"; put "hold$n.rss_kb" "$rss"; put "hold$n.bytes_per_stream" "$per"
  log "$n idle streams: held $held, RSS ${rss} kB, ${per} bytes per stream"
  wait $hp || true
  # Let the gateway notice the closed streams before the next round.
  for _ in $(seq 100); do
    curl -s "http://$HOLD_ADDR/metrics" | grep -q '^qwen_gateway_in_flight_streams 0' && break; sleep 0.1
  done
done

log "== the fair queue: requests waiting for one slot"
# One slot on the slow stand-in: the first request takes it, the rest wait in the queue.
# Memory per waiting request (RSS) and the CPU to admit and queue one.
QN=$([ $SMOKE = 1 ] && echo 50 || echo 1000)
mkdir -p "$work/q"
gateway_policy "$work/q/policy.yaml" "$SLOW" off 100000 600
sed -i -e 's/max_in_flight: 10000/max_in_flight: 1/' -e 's/queue: {max_waiting: 10000}/queue: {max_waiting: 10000, max_wait_seconds: 600}/' "$work/q/policy.yaml"
start_gateway "$work/q/policy.yaml"
Q_PID=$GW_PID; Q_ADDR=$GW_ADDR
$LOAD "$BIN/qwen-bench" hold --addr "$Q_ADDR" --body "$work/openai-stream.json" --header "X-Api-Key: $KEY" --streams 20 --seconds 0.2 --queued > /dev/null
for _ in $(seq 100); do
  curl -s "http://$Q_ADDR/metrics" | grep -q '^qwen_gateway_in_flight_requests 1$' && break; sleep 0.1
done
qbase=$(rss_kb "$Q_PID"); qcpu0=$(cpu_ticks "$Q_PID")
fifo="$work/q.hold"
$LOAD "$BIN/qwen-bench" hold --addr "$Q_ADDR" --body "$work/openai-stream.json" --header "X-Api-Key: $KEY" --streams "$QN" --seconds 5 --queued > "$fifo" &
hp=$!
waiting=0
for _ in $(seq 300); do
  waiting=$(curl -s "http://$Q_ADDR/metrics" | awk '/^qwen_gateway_backend_queue_waiting/ {print $2}' | head -1)
  [ "${waiting:-0}" -ge $((QN - 1)) ] && break; sleep 0.1
done
qrss=$(rss_kb "$Q_PID"); qcpu1=$(cpu_ticks "$Q_PID")
qper=$(python3 -c "print(round(($qrss-$qbase)*1024/max(1,${waiting:-0})))")
qcpu=$(python3 -c "print(round(($qcpu1-$qcpu0)/$TICK*1e6/max(1,$QN),1))")
put queue.waiting "${waiting:-0}"; put queue.bytes_per_waiting "$qper"; put queue.cpu_us_per_request "$qcpu"
log "queue: $waiting waiting, ${qper} bytes and ${qcpu} us CPU each"
wait $hp || true
[ "${waiting:-0}" -ge $((QN - 1)) ] || { log "bench.sh: the queue never held $((QN - 1)) requests"; exit 1; }

log "== reload under load"
reload_ms=()
: > "$work/reload.wrk"
lua=$(wrk_lua gateway)
$LOAD wrk -t1 -c8 -d$((RELOADS * 2 + 2))s -s "$lua" "http://$GW_MAIN/v1/chat/completions" > "$work/reload.wrk" 2>&1 &
wp=$!
sleep 0.5
for i in $(seq "$RELOADS"); do
  gateway_policy "$work/new.yaml" "$FAKE" on $((100000 - i))
  # /v1/models is a listing route: its own limit, 10x the request limit, shows the change.
  r=$($LOAD "$BIN/qwen-bench" reload --addr "$GW_MAIN" --path /v1/models --header "X-Api-Key: $KEY" \
      --policy "$work/gw/policy.yaml" --new "$work/new.yaml" --expect "x-ratelimit-limit-requests: $(( (100000 - i) * 10 ))")
  reload_ms+=("$(python3 -c "import json;print(json.loads('''$r''').get('ms','nan'))")")
  sleep 0.3
done
wait $wp || true
rerr=$(awk '/Non-2xx/ {print $5}' "$work/reload.wrk"); rerr=${rerr:-0}
rsock=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$work/reload.wrk"); rerr=$((rerr + ${rsock:-0}))
put reload.ms "$(IFS=,; echo "${reload_ms[*]}")"
put reload.errors "$rerr"
put reload.requests "$(awk '/requests in/ {print $1}' "$work/reload.wrk")"
log "reload: ms ${reload_ms[*]}; errors during reloads: $rerr"
# A reload the probe never saw is a broken measurement (or a broken reload), not a number.
for m in "${reload_ms[@]}"; do
  [ "$m" != nan ] || { log "bench.sh: a reload was never seen by the probe"; exit 1; }
done

log "== audit log on vs off, token quotas on vs off, $ROUNDS interleaved rounds of ${ROUND_DUR}s"
# Three fresh gateways, identical but for the audit log (noaudit vs audit) or the token quota
# (noquota vs audit), saturated in turns.
declare -A GW_PIDS
for name in gateway_noaudit gateway_audit gateway_noquota; do
  mkdir -p "$work/$name"
  gateway_policy "$work/$name/policy.yaml" "$FAKE" "$([ $name = gateway_noaudit ] && echo off || echo on)" \
    100000 60 "$([ $name = gateway_noquota ] && echo off || echo on)"
  start_gateway "$work/$name/policy.yaml"
  GW_PIDS[$name]=$GW_PID
  ADDR[$name]=$GW_ADDR; PATHS[$name]=/v1/chat/completions; BODY[$name]=openai; AUTH[$name]="X-Api-Key: $KEY"
done
for r in $(seq "$ROUNDS"); do
  for name in gateway_noaudit gateway_audit gateway_noquota; do
    GW_PID=${GW_PIDS[$name]}
    run_wrk "$name" "$ROUND_DUR"
    put "$name.round$r" "{\"rps\": ${RPS:-0}, \"cpu_us\": ${CPU_US}, \"requests\": ${REQS:-0}, \"errors\": ${NON2XX}}"
    log "round $r $name: ${RPS} req/s, ${CPU_US} us CPU/req"
  done
done
# The audit-on instance is fresh, so its lines can be counted exactly after a clean stop.
GW_ADDR=${ADDR[gateway_audit]}
counted=$(curl -s "http://$GW_ADDR/metrics" | awk '/^qwen_gateway_requests_total/ {s += $NF} END {print s+0}')
kill -TERM "${GW_PIDS[gateway_audit]}"; wait "${GW_PIDS[gateway_audit]}" 2>/dev/null || true
lines=$(cat "$work/gateway_audit/audit/"*.jsonl | wc -l)
put audit.counted_requests "$((counted + 1))"   # + the /metrics scrape itself
put audit.lines "$lines"
log "audit: lines $lines for $((counted + 1)) requests"

python3 - "$RES" "$OUT/results.json" "$SMOKE" <<'PY'
import json, sys, math
raw = {}
for line in open(sys.argv[1]):
    k, _, v = line.rstrip("\n").partition("=")
    try:
        raw[k] = json.loads(v)
    except ValueError:
        raw[k] = v
def num(x):
    try: return float(x)
    except (TypeError, ValueError): return float("nan")
R = {"smoke": sys.argv[3] == "1", "raw": raw}
def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return float("nan") if n == 0 else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)
systems = ("direct", "nginx_hop", "bare_actix", "gateway", "nginx_gateway", "gateway_native")
lat = {s: raw[f"{s}.latency"] for s in systems}
rounds = {s: [raw[k] for k in sorted(raw) if k.startswith(s + ".round")] for s in systems}
rps = {s: median([x["rps"] for x in rounds[s]]) for s in systems}
cpu = {s: median([x["cpu_us"] for x in rounds[s]]) for s in systems}
errors = {s: sum(x["errors"] for x in rounds[s]) for s in systems}
def round_ratio(a, b, field):
    # Per round, so both sides share the host's state of the moment; then the median.
    return median([x[field] / y[field] for x, y in zip(rounds[a], rounds[b]) if y[field]])
R["rounds"] = len(rounds["gateway"])
R["median_rps"] = rps
R["median_cpu_us_per_req"] = cpu
R["ratios"] = {
    "gateway_vs_nginx_hop_rps": round_ratio("gateway", "nginx_hop", "rps"),
    "gateway_vs_direct_rps": round_ratio("gateway", "direct", "rps"),
    "gateway_vs_nginx_hop_cpu": round_ratio("gateway", "nginx_hop", "cpu_us"),
    "bare_actix_vs_nginx_hop_rps": round_ratio("bare_actix", "nginx_hop", "rps"),
    "bare_actix_vs_nginx_hop_cpu": round_ratio("bare_actix", "nginx_hop", "cpu_us"),
    "gateway_vs_bare_actix_cpu": round_ratio("gateway", "bare_actix", "cpu_us"),
    "gateway_native_vs_bare_actix_rps": round_ratio("gateway_native", "bare_actix", "rps"),
    "gateway_native_vs_bare_actix_cpu": round_ratio("gateway_native", "bare_actix", "cpu_us"),
}
R["added_latency_us"] = {q: lat["gateway"][q] - lat["direct"][q] for q in ("p50_us", "p99_us", "p999_us")}
R["nginx_hop_added_latency_us"] = {q: lat["nginx_hop"][q] - lat["direct"][q] for q in ("p50_us", "p99_us", "p999_us")}
print("## qwen-gateway benchmark" + (" (smoke run: numbers mean nothing)" if R["smoke"] else ""))
print()
print(f"Saturation: medians over {R['rounds']} interleaved rounds.")
print()
print("| system | p50 µs | p99 µs | p99.9 µs | req/s @64 | CPU µs/req | errors |")
print("|---|---|---|---|---|---|---|")
for s in lat:
    l = lat[s]
    print(f"| {s} | {l['p50_us']:.0f} | {l['p99_us']:.0f} | {l['p999_us']:.0f} | {rps[s]:.0f} | {cpu[s]:.1f} | {errors[s]} |")
print()
r = R["ratios"]; a = R["added_latency_us"]
print(f"- gateway / nginx hop throughput: {r['gateway_vs_nginx_hop_rps']:.0%} (target >= 70%); CPU per request {r['gateway_vs_nginx_hop_cpu']:.2f}x (target <= 1.5x)")
print(f"- framework floor (bare actix-web + awc pass-through) / nginx hop: throughput {r['bare_actix_vs_nginx_hop_rps']:.0%}, CPU per request {r['bare_actix_vs_nginx_hop_cpu']:.2f}x; gateway / floor CPU {r['gateway_vs_bare_actix_cpu']:.2f}x")
print(f"- gateway / direct throughput: {r['gateway_vs_direct_rps']:.0%}")
print(f"- native /api/chat through the gateway (guarded pass-through) / framework floor: throughput {r['gateway_native_vs_bare_actix_rps']:.0%} (target >= 85%), CPU per request {r['gateway_native_vs_bare_actix_cpu']:.2f}x")
print(f"- added latency at 1 connection: p50 {a['p50_us']:.0f} µs (target <= 150), p99 {a['p99_us']:.0f} µs (target <= 400), p99.9 {a['p999_us']:.0f} µs")
print(f"- gateway RSS: idle {raw['gateway.idle_rss_kb']/1024:.1f} MB (target <= 15), after load {raw['gateway.loaded_rss_kb']/1024:.1f} MB")
print()
print("Streaming, 50 chunks x 20 ms, all streams of a round started at once (1 stream: 20 rounds, 100: 3); added = system - direct; 1w = one stream on a warm keep-alive connection:")
print()
print("| streams | system | complete | added TTFB p50 µs | added TTFB p99 µs | added gap p50 µs | added gap p99 µs |")
print("|---|---|---|---|---|---|---|")
streams = {}
labels = [k[len("stream"):-len(".gateway")] for k in raw if k.startswith("stream") and k.endswith(".gateway")]
for n in sorted(labels, key=lambda l: (l.endswith("w"), int(l.rstrip("w")))):
        d = raw[f"stream{n}.direct"]
        for system in ("nginx_hop", "gateway"):
            g = raw.get(f"stream{n}.{system}")
            if not g:
                continue
            row = {q: g[q] - d[q] for q in ("ttfb_p50_us", "ttfb_p99_us", "gap_p50_us", "gap_p99_us")}
            row["complete"] = f"{g['complete']}/{g['streams']} ({g['events']}/{g['expected_events']} chunks)"
            streams[f"{n}.{system}"] = row
            print(f"| {n} | {system} | {row['complete']} | {row['ttfb_p50_us']:.0f} | {row['ttfb_p99_us']:.0f} | {row['gap_p50_us']:.0f} | {row['gap_p99_us']:.0f} |")
R["streams_added"] = streams
print()
for k in sorted(raw):
    if k.startswith("hold") and k.endswith(".bytes_per_stream"):
        n = k[4:-len(".bytes_per_stream")]
        print(f"- {raw['hold' + n + '.held']} idle streams held: {raw[k]/1024:.1f} KB per stream (target <= 32)")
print(f"- fair queue: {raw['queue.waiting']} requests waiting for one slot: {raw['queue.bytes_per_waiting']} bytes of RSS each, {raw['queue.cpu_us_per_request']} µs CPU to admit and queue each")
ms = [num(x) for x in str(raw["reload.ms"]).split(",") if x]
R["reload_ms"] = ms
print(f"- reload, rename to first request that sees it: max {max(ms):.1f} ms, mean {sum(ms)/len(ms):.1f} ms over {len(ms)} (target <= 50); errors under load during reloads: {raw['reload.errors']} of {raw['reload.requests']}")
rounds["gateway_audit"] = [raw[k] for k in sorted(raw) if k.startswith("gateway_audit.round")]
rounds["gateway_noaudit"] = [raw[k] for k in sorted(raw) if k.startswith("gateway_noaudit.round")]
on = median([x["rps"] for x in rounds["gateway_audit"]])
off = median([x["rps"] for x in rounds["gateway_noaudit"]])
R["audit_cost"] = 1 - round_ratio("gateway_audit", "gateway_noaudit", "rps")
R["audit_cost_cpu"] = round_ratio("gateway_audit", "gateway_noaudit", "cpu_us") - 1
rounds["gateway_noquota"] = [raw[k] for k in sorted(raw) if k.startswith("gateway_noquota.round")]
R["quota_cost"] = 1 - round_ratio("gateway_audit", "gateway_noquota", "rps")
R["quota_cost_cpu"] = round_ratio("gateway_audit", "gateway_noquota", "cpu_us") - 1
print(f"- token quotas (reserve and settle per request): {R['quota_cost']:+.1%} throughput, {R['quota_cost_cpu']:+.1%} CPU per request (median of per-round ratios; target <= 5%)")
print(f"- audit log: {on:.0f} req/s on vs {off:.0f} off (median of per-round ratios: {R['audit_cost']:+.1%} throughput, {R['audit_cost_cpu']:+.1%} CPU per request; target <= 5%); {raw['audit.lines']} lines for {raw['audit.counted_requests']} requests")
json.dump(R, open(sys.argv[2], "w"), indent=2, default=str)
print()
print(f"JSON: {sys.argv[2]}")
PY
