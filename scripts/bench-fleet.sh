#!/usr/bin/env bash
# The fleet benchmark (issue 21), run as `scripts/bench.sh fleet`: 3 simulated GPU hosts
# (fake-ollama --gpu: model loads, 2 models in memory at most, 4 slots per model with prompt
# caches, prompt evaluation and generation time) behind 2 gateways sharing a real
# redis-server, with a seeded mixed workload (scripts/fleet_workload.py: agent sessions whose
# conversations grow turn by turn, chat users, embedding batches; three models). The same
# workload runs under three configurations:
#   before       upstream.routing: least_busy, each gateway counting its own slots (memory)
#   least_busy   upstream.routing: least_busy, slots shared through Redis
#   cache_aware  upstream.routing: cache_aware (warm, affinity), slots shared through Redis
# and the table reports time to first token (mean, p99), model loads, prompt tokens
# evaluated, and the most requests any host had at once against its max_in_flight.
#
#   scripts/bench.sh fleet            ~4 minutes, release build; results in target/bench/fleet/
#   scripts/bench.sh fleet --smoke    a shorter workload on the debug build
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ $SMOKE = 1 ]; then PROFILE=debug; SCALE=0.5; else PROFILE=release; SCALE=1; fi
SEED=${SEED:-7}
MAX_IN_FLIGHT=4
OUT=${BENCH_OUT:-$repo/target/bench}/fleet
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }

REDIS=$(command -v redis-server || echo /usr/bin/redis-server)
[ -x "$REDIS" ] || { echo "bench-fleet: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
if [ $PROFILE = release ]; then cargo build --release --locked --workspace --bins -q; else cargo build --locked --workspace --bins -q; fi
BIN=$repo/target/$PROFILE
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

RPORT=$(free_port)
"$REDIS" --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no > /dev/null 2>&1 &
pids+=($!)
wait_port "$RPORT"

keys() { # prefix count
  local i
  for i in $(seq 0 $(( $2 - 1 ))); do printf '    - {id: %s-%04d, key: "%s-key-%04d"}\n' "$1" "$i" "$1" "$i"; done
}

run_config() { # name routing limit-backend
  local name=$1 routing=$2 backend=$3 fakes=() i
  # Fresh hosts: every model starts out of memory.
  for i in 0 1 2; do
    local f="$work/fake.$name.$i"
    "$BIN/fake-ollama" --listen 127.0.0.1:0 --workers 2 --chunks 20 \
      --models "qwen3:32b,llama3.2:3b,nomic-embed-text" --gpu --gpu-load-ms 3000 \
      --gpu-max-loaded 2 --gpu-parallel 4 --gpu-prompt-us 250 --gpu-gen-us 15000 > "$f" 2>/dev/null &
    pids+=($!)
    for _ in $(seq 200); do [ -s "$f" ] && break; sleep 0.05; done
    fakes+=("$(awk '{print $3}' "$f")")
  done
  redis-cli -p "$RPORT" flushall > /dev/null 2>&1 || python3 - "$RPORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n"); s.recv(64)
PY
  local policy="$work/policy.$name.yaml"
  {
    echo 'listen: "127.0.0.1:0"'
    echo 'log_level: info'
    echo "audit: {dir: \"$OUT/audit-$name\"}"
    echo 'backends:'
    for f in "${fakes[@]}"; do echo "  - {url: \"http://$f\", max_loaded_models: 2}"; done
    echo 'whitelist: {enabled: false}'
    echo 'auth:'
    echo '  enabled: true'
    echo '  keys:'
    keys agent 8; keys chat 12; keys embed 4
    if [ "$backend" = redis ]; then
      echo "rate_limit: {enabled: true, max_requests: 100000, window_seconds: 60, backend: redis, redis_url: \"redis://127.0.0.1:$RPORT/0\"}"
    else
      echo 'rate_limit: {enabled: true, max_requests: 100000, window_seconds: 60}'
    fi
    echo "upstream: {max_in_flight: $MAX_IN_FLIGHT, routing: $routing, model_refresh_seconds: 2, slot_lease_seconds: 6}"
    echo 'queue: {max_wait_seconds: 120}'
    echo 'limits: {max_prompt_chars: 400000, max_body_bytes: 8388608}'
    echo 'models: {agent-model: "qwen3:32b", chat-model: "llama3.2:3b", embed-model: "nomic-embed-text"}'
  } > "$policy"
  local gws=() g
  for g in 0 1; do
    local err="$work/gw.$name.$g.err"
    "$BIN/qwen-gateway" --workers 2 --no-watch --config "$policy" 2> "$err" &
    pids+=($!)
    local addr=
    for _ in $(seq 200); do
      addr=$(grep -o 'addr=[0-9.:]*' "$err" 2>/dev/null | head -1 | cut -d= -f2 || true)
      [ -n "$addr" ] && break
      sleep 0.05
    done
    [ -n "$addr" ] || { cat "$err" >&2; exit 1; }
    gws+=("$addr")
  done
  log "fleet: $name (routing $routing, slots $backend): hosts ${fakes[*]}, gateways ${gws[*]}"
  python3 scripts/fleet_workload.py "$SEED" "$(IFS=,; echo "${gws[*]}")" "$OUT/$name.workload.json" "$SCALE" > /dev/null
  python3 - "$OUT/$name.workload.json" "$OUT/$name.json" "$name" "$MAX_IN_FLIGHT" "${fakes[@]}" <<'PY'
import json, sys, urllib.request
wl, out, name, limit, hosts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
w = json.load(open(wl))
stats = [json.load(urllib.request.urlopen(f"http://{h}/_fake/stats")) for h in hosts]
res = dict(w)
res["name"] = name
res["loads"] = sum(s["gpu"]["loads"] for s in stats)
res["evictions"] = sum(s["gpu"]["evictions"] for s in stats)
res["prompt_tokens_evaluated"] = sum(s["gpu"]["prompt_tokens_evaluated"] for s in stats)
res["max_in_flight_seen"] = max(s["max_active"] for s in stats)
res["max_in_flight"] = limit
res["load_logs"] = [s["gpu"]["load_log"] for s in stats]
json.dump(res, open(out, "w"), indent=1)
PY
  # Stop this configuration's hosts and gateways before the next.
  for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=("${pids[0]}")
}

run_config before least_busy memory
run_config least_busy least_busy redis
run_config cache_aware cache_aware redis

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys
out = sys.argv[1]
rows = [json.load(open(f"{out}/{n}.json")) for n in ("before", "least_busy", "cache_aware")]
print("| configuration | requests (failed) | TTFT mean | TTFT p99 | agents' TTFT mean | model loads | prompt tokens evaluated | most in flight on a host (max_in_flight) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    t, a = r["ttft_chat_and_agents"], r["ttft_agents"]
    print(f"| {r['name']} | {r['requests']} ({r['failed']}) | {t.get('mean_s', '-')} s | {t.get('p99_s', '-')} s | "
          f"{a.get('mean_s', '-')} s | {r['loads']} | {r['prompt_tokens_evaluated']:,} | "
          f"{r['max_in_flight_seen']} ({r['max_in_flight']}) |")
lb, ca = rows[1], rows[2]
mean_x = lb["ttft_chat_and_agents"]["mean_s"] / max(ca["ttft_chat_and_agents"]["mean_s"], 1e-9)
loads_x = lb["loads"] / max(ca["loads"], 1)
print()
print(f"cache_aware vs least_busy (both with shared slots): mean TTFT {mean_x:.1f}x lower, "
      f"model loads {loads_x:.1f}x fewer, p99 {lb['ttft_chat_and_agents']['p99_s']} s -> "
      f"{ca['ttft_chat_and_agents']['p99_s']} s")
PY
