#!/usr/bin/env bash
# Runs the gateway on 127.0.0.1:18789 with the bundled policy. Uses a real Ollama when one
# answers on 127.0.0.1:11434; otherwise starts the stand-in Ollama there. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --workspace --bins
BIN=target/release
OLLAMA=http://127.0.0.1:11434
FAKE_PID=
if curl -fsS --max-time 2 "$OLLAMA/api/version" >/dev/null 2>&1; then
  echo "Using the Ollama already answering at $OLLAMA."
else
  echo "No Ollama at $OLLAMA: starting the stand-in Ollama there."
  "$BIN/fake-ollama" --listen 127.0.0.1:11434 >/dev/null &
  FAKE_PID=$!
  for _ in $(seq 100); do
    curl -fsS --max-time 1 "$OLLAMA/api/version" >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
cleanup() { [ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null || true; }
trap cleanup EXIT

DEMO=target/demo
mkdir -p "$DEMO"
# The bundled policy, with the audit log kept inside the checkout.
sed -e "s|dir: \"/var/log/qwen-gateway\"|dir: \"$PWD/$DEMO/audit\"|" policy/policy.yaml > "$DEMO/policy.yaml"
"$BIN/qwen-gateway" check --config "$DEMO/policy.yaml" >/dev/null

cat <<MSG

qwen-gateway on http://127.0.0.1:18789 (policy: $DEMO/policy.yaml, edit it live; audit: $DEMO/audit)
Try:
  curl -s http://127.0.0.1:18789/v1/chat/completions -H 'Authorization: Bearer demo-key-change-me' \\
       -H 'Content-Type: application/json' \\
       -d '{"model":"qwen3:32b","messages":[{"role":"user","content":"你好"}]}'

MSG
"$BIN/qwen-gateway" --config "$DEMO/policy.yaml"
