#!/usr/bin/env bash
# Browser runs of the real chat UIs through the bundled site (issue 18): Open WebUI 0.12.4
# (its Ollama or its OpenAI connection) or OpenClaw 2026.9.6's web chat, in headless
# Chromium, behind nginx/qwen-gateway.conf.template exactly as nginx/render.sh renders it,
# with TLS, the gateway on the shipped policy and the stand-in Ollama. Passes when the UI
# answers a chat with no CSP violation and no failed request, and none of the UI's own
# requests reached the gateway (its audit log holds only Ollama routes).
#
#   tests/browser/run.sh open-webui-ollama | open-webui-openai | openclaw
#
# Not part of scripts/test.sh: it downloads Open WebUI (~1 GB of Python packages) or
# OpenClaw with Node.js 24, and Chromium. Needs root (nginx on 8443, an address on lo).
set -euo pipefail
CASE=${1:?usage: run.sh open-webui-ollama|open-webui-openai|openclaw}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
W=$REPO/target/browser
S=$W/stack-$CASE
KEY=demo-key-change-me
mkdir -p "$W"
command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt-get install -y -q nginx >/dev/null
[ -d "$W/pw/node_modules/playwright-core" ] || (mkdir -p "$W/pw" && cd "$W/pw" && npm install -q --no-audit --no-fund playwright-core >/dev/null)
(cd "$REPO" && cargo build -q --workspace --bins)

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$S/nginx.pid" ] && kill "$(cat "$S/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT
wait_http() { for _ in $(seq 600); do curl -fsk -o /dev/null "$1" && return 0; sleep 0.5; done; echo "no answer from $1" >&2; exit 1; }

rm -rf "$S"; mkdir -p "$S/snippets" "$S/logs" "$S/acme" "$S/audit"
"$REPO/target/debug/fake-ollama" --listen 127.0.0.1:11434 >"$S/fake.log" 2>&1 & pids+=($!)
sed -e "s|dir: \"/var/log/qwen-gateway\"|dir: \"$S/audit\"|" "$REPO/policy/policy.yaml" >"$S/policy.yaml"
"$REPO/target/debug/qwen-gateway" --config "$S/policy.yaml" >"$S/gateway.log" 2>&1 & pids+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,DNS:ai.test,IP:127.0.0.1 \
  -keyout "$S/key.pem" -out "$S/cert.pem" 2>/dev/null
cp "$REPO"/nginx/snippets/*.conf "$S/snippets/"
UI=${CASE%%-ollama}; UI=${UI%%-openai}
DOMAIN=ai.test SSL_CERT=$S/cert.pem SSL_KEY=$S/key.pem HTTP_PORT=8081 HTTPS_PORT=8443 \
  GATEWAY_ADDR=127.0.0.1:18789 CHATUI_ADDR=127.0.0.1:8080 ACCESS_LOG=$S/logs/site.access.log \
  ERROR_LOG=$S/logs/site.error.log ACME_ROOT=$S/acme CHAT_UI=$UI \
  "$REPO/nginx/render.sh" "$REPO/nginx/qwen-gateway.conf.template" >"$S/site.conf"
cat >"$S/nginx.conf" <<NG
user root;
worker_processes 1;
pid $S/nginx.pid;
error_log $S/logs/error.log warn;
include snippets/qwen-gateway-main.conf;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  access_log $S/logs/access.log;
  client_body_temp_path $S/body; proxy_temp_path $S/proxy;
  include site.conf;
}
NG
PATH=$PATH:/usr/sbin nginx -p "$S" -c "$S/nginx.conf"
# The browser reaches the site as a remote client would: from an address that is not
# loopback (OpenClaw refuses a forwarded loopback client), named ai.test.
ip addr show dev lo | grep "10.99.0.1/" >/dev/null || ip addr add 10.99.0.1/32 dev lo
wait_http http://127.0.0.1:18789/healthz

case $CASE in
  open-webui-*)
    [ -x "$W/owui/bin/open-webui" ] || { python3 -m venv "$W/owui" && "$W/owui/bin/pip" install -q open-webui==0.12.4; }
    rm -rf "$S/owui-data"; mkdir -p "$S/owui-data"
    export DATA_DIR=$S/owui-data WEBUI_AUTH=False OFFLINE_MODE=true ENABLE_PERSISTENT_CONFIG=False \
      SSL_CERT_FILE=$S/cert.pem REQUESTS_CA_BUNDLE=$S/cert.pem HF_HUB_OFFLINE=1 \
      RAG_EMBEDDING_ENGINE=ollama RAG_EMBEDDING_MODEL=qwen3:32b \
      RAG_OLLAMA_BASE_URL=https://localhost:8443/ollama RAG_OLLAMA_API_KEY=$KEY \
      WEBUI_SECRET_KEY=browser-test ENABLE_VERSION_UPDATE_CHECK=false
    if [ "$CASE" = open-webui-openai ]; then
      export ENABLE_OLLAMA_API=false ENABLE_OPENAI_API=true \
        OPENAI_API_BASE_URL=https://localhost:8443/v1 OPENAI_API_KEY=$KEY
    else
      export ENABLE_OLLAMA_API=true ENABLE_OPENAI_API=false \
        OLLAMA_BASE_URL=https://localhost:8443/ollama OLLAMA_API_CONFIGS="{\"0\":{\"key\":\"$KEY\"}}"
    fi
    "$W/owui/bin/open-webui" serve --host 127.0.0.1 --port 8080 >"$S/ui.log" 2>&1 & pids+=($!)
    wait_http http://127.0.0.1:8080/health
    DRIVER=open-webui.js
    ;;
  openclaw)
    [ -x "$W/node24/node_modules/node/bin/node" ] || (mkdir -p "$W/node24" && cd "$W/node24" && npm install -q --no-audit --no-fund node@24 >/dev/null)
    export PATH=$W/node24/node_modules/node/bin:$PATH
    [ -x "$W/openclaw/node_modules/.bin/openclaw" ] || (mkdir -p "$W/openclaw" && cd "$W/openclaw" && npm install -q --no-audit --no-fund openclaw@2026.9.6 >/dev/null)
    export HOME=$S/home NODE_EXTRA_CA_CERTS=$S/cert.pem
    mkdir -p "$HOME/.openclaw"
    # The README's OpenClaw settings: trustedProxies and the site's origin.
    cat >"$HOME/.openclaw/openclaw.json" <<JSON
{"gateway": {"mode": "local", "port": 8080, "bind": "loopback",
  "auth": {"mode": "token", "token": "browser-test-token-0123456789"},
  "trustedProxies": ["127.0.0.1"], "controlUi": {"allowedOrigins": ["https://ai.test:8443"]}},
 "models": {"providers": {"ollama": {"baseUrl": "https://localhost:8443/ollama", "apiKey": "$KEY",
  "api": "ollama", "models": [{"id": "qwen3:32b", "name": "qwen3:32b", "input": ["text"],
  "contextWindow": 40960, "maxTokens": 8192}]}}},
 "agents": {"defaults": {"model": {"primary": "ollama/qwen3:32b"}}}}
JSON
    "$W/openclaw/node_modules/.bin/openclaw" gateway run >"$S/ui.log" 2>&1 & pids+=($!)
    wait_http http://127.0.0.1:8080/
    export OPENCLAW=$W/openclaw/node_modules/.bin/openclaw
    DRIVER=openclaw.js
    ;;
  *) echo "unknown case $CASE" >&2; exit 2 ;;
esac

cp "$REPO/tests/browser/$DRIVER" "$W/pw/"
(cd "$W/pw" && OUT=$S node "$DRIVER")
# None of the UI's own requests reached the gateway: its audit log holds Ollama's and
# OpenAI's routes only.
python3 - "$S/audit" <<'PY'
import json, pathlib, sys
ollama = {"/healthz", "/api/chat", "/api/generate", "/api/tags", "/api/ps", "/api/show", "/api/embed",
          "/api/embeddings", "/v1/models", "/v1/chat/completions", "/v1/embeddings"}
paths = [json.loads(l)["path"] for f in pathlib.Path(sys.argv[1]).glob("*.jsonl") for l in open(f)]
alien = [p for p in paths if p not in ollama]
print(f"gateway saw {len(paths)} requests: {sorted(set(paths))}")
if alien or not paths:
    sys.exit(f"the UI's own requests reached the gateway: {alien}" if alien else "nothing reached the gateway")
PY
echo "PASS $CASE"
