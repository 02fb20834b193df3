#!/usr/bin/env bash
# Instructions per request, by route, counted by callgrind: the figure the host's noise cannot
# move. One gateway (one worker, every guard on: key, allowlist, rate limit, token quota, fair
# queue, audit log) in front of the stand-in Ollama (--fast); per route, 10 warm-up requests,
# then N sequential keep-alive requests between two callgrind dumps, so start-up and warm-up
# are not counted. Compares with the committed budget (scripts/instructions-budget.txt, one
# line per profile and route) and fails when a route costs more than 5% over it.
#
#   scripts/instructions.sh            debug build, as scripts/test.sh runs it
#   scripts/instructions.sh release    the figures the README quotes
#   UPDATE_BUDGET=1 scripts/instructions.sh [release]   write the measured figures as the budget
#   KEEP_PROFILE=dir scripts/instructions.sh release    keep the callgrind dumps for a profile
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-debug}
N=${N:-100}
BIN=target/$PROFILE
BUDGET=scripts/instructions-budget.txt
[ "$PROFILE" = release ] && cargo build --release --locked --workspace --bins -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/fake-ollama" --listen 127.0.0.1:0 --fast > "$work/fake.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do FAKE=$(grep -o '127.0.0.1:[0-9]*' "$work/fake.out" | head -1 || true); [ -n "$FAKE" ] && break; sleep 0.05; done
KEY=instructions-key-0123456789abcdef
cat > "$work/policy.yaml" <<YAML
listen: "127.0.0.1:0"
ollama_api: "http://$FAKE"
log_level: info
auth: {enabled: true, keys: [{id: bench, key: "$KEY"}]}
whitelist: {enabled: true, ips: ["127.0.0.1"]}
rate_limit: {enabled: true, max_requests: 100000, window_seconds: 1}
upstream: {max_in_flight: 10000}
token_limit: {tokens_per_minute: 1000000000000}
audit: {dir: "$work/audit"}
YAML
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  "$BIN/qwen-gateway" --workers 1 --no-watch --config "$work/policy.yaml" 2> "$work/gw.err" &
GW=$!
pids+=($GW)
for _ in $(seq 600); do ADDR=$(grep -o 'addr=[0-9.:]*' "$work/gw.err" | head -1 | cut -d= -f2 || true); [ -n "$ADDR" ] && break; sleep 0.1; done
[ -n "${ADDR:-}" ] || { cat "$work/gw.err" >&2; exit 1; }

# Sends requests and asks callgrind for a dump after the warm-up and after the measured ones;
# prints "route instructions-per-request".
python3 - "$ADDR" "$KEY" "$N" "$GW" "$work" > "$work/measured" <<'PY'
import glob, http.client, json, os, subprocess, sys, time
addr, key, n, pid, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = addr.rsplit(":", 1)
routes = {
    "/api/chat": {"model": "qwen3:32b", "stream": False, "messages": [{"role": "user", "content": "hello there"}]},
    "/v1/chat/completions": {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hello there"}]},
    "/v1/messages": {"model": "qwen3:32b", "max_tokens": 64, "messages": [{"role": "user", "content": "hello there"}]},
}
def dumps():
    return sorted(glob.glob(os.path.join(work, "cg.*")))
def dump():
    before = len(dumps())
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    deadline = time.time() + 60
    while len(dumps()) <= before:
        if time.time() > deadline:
            sys.exit("callgrind did not dump")
        time.sleep(0.05)
    time.sleep(0.2)
    f = dumps()[-1]
    for line in open(f):
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    sys.exit(f"no totals in {f}")
c = http.client.HTTPConnection(host, int(port), timeout=120)
def send(path, body):
    c.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"{path}: {r.status}")
for path, body in routes.items():
    for _ in range(10):
        send(path, body)
    dump()
    for _ in range(n):
        send(path, body)
    print(path, dump() // n)
PY
cat "$work/measured"
# KEEP_PROFILE=dir keeps the dumps, for callgrind_annotate: per route, a warm-up dump, then the
# measured one (cg.<pid>.2 is /api/chat's, .4 chat completions', .6 messages').
if [ -n "${KEEP_PROFILE:-}" ]; then mkdir -p "$KEEP_PROFILE" && cp "$work"/cg.* "$KEEP_PROFILE"/; fi
if [ "${UPDATE_BUDGET:-0}" = 1 ]; then
  { grep -v "^$PROFILE " "$BUDGET" 2>/dev/null || true; sed "s/^/$PROFILE /" "$work/measured"; } | sort > "$work/budget"
  mv "$work/budget" "$BUDGET"
  echo "budget for $PROFILE written to $BUDGET"
  exit 0
fi
over=0
while read -r route measured; do
  budget=$(awk -v p="$PROFILE" -v r="$route" '$1 == p && $2 == r {print $3}' "$BUDGET")
  if [ -z "$budget" ]; then echo "no $PROFILE budget for $route in $BUDGET" >&2; over=1; continue; fi
  awk -v r="$route" -v m="$measured" -v b="$budget" \
    'BEGIN { printf "%-22s %9d instructions/request (budget %d, %+.1f%%)\n", r, m, b, (m - b) * 100 / b }'
  if [ $(( measured * 100 )) -gt $(( budget * 105 )) ]; then
    echo "$route costs more than 5% over its budget: find what added the cost, or raise the budget with UPDATE_BUDGET=1 in the commit that says why" >&2
    over=1
  fi
done < "$work/measured"
exit $over
