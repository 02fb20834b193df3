#!/usr/bin/env bash
# Renders an Nginx template with the values from nginx/site.env (or a file given with -e);
# environment variables of the same names override the file. Usage:
#   nginx/render.sh [-e site.env] TEMPLATE > OUTPUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
envfile="$here/site.env"
if [ "${1:-}" = "-e" ]; then envfile=$2; shift 2; fi
template=${1:?usage: render.sh [-e site.env] TEMPLATE}
vars=(DOMAIN SSL_CERT SSL_KEY HTTP_PORT HTTPS_PORT GATEWAY_ADDR ACME_ROOT MAX_BODY)
optional=(GATEWAY_ADDRS CHATUI_ADDR USER_ID ACCESS_LOG ERROR_LOG CHAT_UI CHATUI_CSP CHATUI_MAX_BODY ASSET_CACHE_REGEX)
declare -A val
while IFS='=' read -r k v; do
  case "$k" in ''|\#*) continue ;; esac
  val[$k]=$v
done < "$envfile"
for k in "${vars[@]}" "${optional[@]}"; do
  if [ -n "${!k:-}" ]; then val[$k]=${!k}; fi
done
for k in "${vars[@]}"; do
  [ -n "${val[$k]:-}" ] || { echo "render.sh: $k is not set" >&2; exit 1; }
done
# The gateway upstream: GATEWAY_ADDRS (several, space-separated) or GATEWAY_ADDR (one).
read -r -a gws <<< "${val[GATEWAY_ADDRS]:-${val[GATEWAY_ADDR]}}"
servers=
if [ ${#gws[@]} -eq 1 ]; then
  # A single gateway is never marked down: Nginx would answer 502 for fail_timeout even
  # after the gateway came back.
  servers="    server ${gws[0]} max_fails=0;"
else
  for g in "${gws[@]}"; do
    servers+="    server $g max_fails=3 fail_timeout=10s;"$'\n'
  done
  servers=${servers%$'\n'}
fi
val[GATEWAY_SERVERS]=$servers
val[ACCESS_LOG]=${val[ACCESS_LOG]:-/var/log/nginx/qwen-gateway.access.log}
val[ERROR_LOG]=${val[ERROR_LOG]:-/var/log/nginx/qwen-gateway.error.log}
val[CHATUI_MAX_BODY]=${val[CHATUI_MAX_BODY]:-25m}
val[ASSET_CACHE_REGEX]=${val[ASSET_CACHE_REGEX]:-'^/(?:_app/immutable/|assets/[^/]+-[A-Za-z0-9_-]{8,}\.[a-z0-9]+$)'}
# The chat UI's Content-Security-Policy (see site.env), and whether the UI's own is kept.
hide_ui_csp=yes
case "${val[CHAT_UI]:-open-webui}" in
  open-webui)
    # Open WebUI sends no policy of its own: the site's is the only one. It frames its own
    # previews and artifacts, hence frame-ancestors 'self'.
    csp="default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: https:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' wss: data: blob:; worker-src 'self' blob:; frame-src 'self' blob: data:; object-src 'none'; base-uri 'self'; frame-ancestors 'self'" ;;
  openclaw)
    # OpenClaw sends its own policy, with the hashes of its inline scripts (new with every
    # release): it is passed through, and this second policy only adds what it may lack.
    # A browser enforces both, so this can never loosen OpenClaw's.
    hide_ui_csp=no
    csp="object-src 'none'; base-uri 'self'; frame-ancestors 'self'" ;;
  custom)
    csp=${val[CHATUI_CSP]:-} ;;
  none)
    # No chat UI on this site: / reaches the gateway (its health answer), /api/ is Ollama's.
    csp="default-src 'none'; frame-ancestors 'none'" ;;
  *) echo "render.sh: CHAT_UI must be open-webui, openclaw, custom or none" >&2; exit 1 ;;
esac
if [ -n "${val[CHATUI_CSP]:-}" ]; then csp=${val[CHATUI_CSP]}; fi
if [ "$hide_ui_csp" = yes ]; then
  val[CHATUI_CSP_HIDE]="proxy_hide_header Content-Security-Policy;"
else
  val[CHATUI_CSP_HIDE]="# The UI's own Content-Security-Policy passes through (CHAT_UI=${val[CHAT_UI]})."
fi
if [ "${val[CHAT_UI]:-open-webui}" = none ]; then
  val[CHATUI_ADDR]=${val[CHATUI_ADDR]:-${gws[0]}}
  val[ROOT_UPSTREAM]=http://qwen_gateway
  val[NATIVE_API_AT_ROOT]='    # No chat UI here (CHAT_UI=none): Ollama'"'"'s native API at /api/ too, for clients that
    # cannot take a base URL with a path.
    location ^~ /api/ {
        proxy_pass http://qwen_gateway;
        include snippets/qwen-gateway-api.conf;
        proxy_set_header X-User-Id "@USER_ID@";
        client_max_body_size @MAX_BODY@;
    }'
else
  [ -n "${val[CHATUI_ADDR]:-}" ] || { echo "render.sh: CHATUI_ADDR is not set (or CHAT_UI=none)" >&2; exit 1; }
  val[ROOT_UPSTREAM]=http://qwen_chat_ui
  val[NATIVE_API_AT_ROOT]="    # /api/ is the chat UI's own API (CHAT_UI=${val[CHAT_UI]:-open-webui}): Ollama's native API is at /ollama/api/."
fi
[ -n "$csp" ] || { echo "render.sh: CHAT_UI=custom needs CHATUI_CSP" >&2; exit 1; }
case "$csp" in *'"'*) echo "render.sh: CHATUI_CSP must not contain double quotes" >&2; exit 1 ;; esac
val[CHATUI_CSP]=$csp
# The redirect keeps a non-standard HTTPS port (tests, staging); 443 needs none.
if [ "${val[HTTPS_PORT]}" = 443 ]; then val[HTTPS_SUFFIX]=; else val[HTTPS_SUFFIX]=":${val[HTTPS_PORT]}"; fi
out=$(cat "$template")
val[USER_ID]=${val[USER_ID]:-}
# The blocks first: they carry placeholders of their own.
for k in NATIVE_API_AT_ROOT CHATUI_CSP_HIDE ROOT_UPSTREAM; do
  out=${out//@${k}@/${val[$k]}}
done
for k in "${vars[@]}" CHATUI_ADDR HTTPS_SUFFIX GATEWAY_SERVERS USER_ID ACCESS_LOG ERROR_LOG CHATUI_MAX_BODY ASSET_CACHE_REGEX CHATUI_CSP; do
  out=${out//@${k}@/${val[$k]}}
done
if grep -q '@[A-Z_]*@' <<<"$out"; then
  echo "render.sh: unreplaced placeholders: $(grep -o '@[A-Z_]*@' <<<"$out" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
printf '%s\n' "$out"
