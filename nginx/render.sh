#!/usr/bin/env bash
# Renders an Nginx template with the values from nginx/site.env (or a file given with -e);
# environment variables of the same names override the file. Usage:
#   nginx/render.sh [-e site.env] TEMPLATE > OUTPUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
envfile="$here/site.env"
if [ "${1:-}" = "-e" ]; then envfile=$2; shift 2; fi
template=${1:?usage: render.sh [-e site.env] TEMPLATE}
vars=(DOMAIN SSL_CERT SSL_KEY HTTP_PORT HTTPS_PORT GATEWAY_ADDR CHATUI_ADDR ACME_ROOT MAX_BODY)
optional=(GATEWAY_ADDRS USER_ID ACCESS_LOG ERROR_LOG CHAT_UI CHATUI_CSP CHATUI_MAX_BODY ASSET_CACHE_REGEX)
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
# The chat UI's Content-Security-Policy (see site.env).
case "${val[CHAT_UI]:-open-webui}" in
  open-webui)
    csp="default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: https:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' wss: data: blob:; worker-src 'self' blob:; frame-src 'self' blob: data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'" ;;
  openclaw)
    csp="default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; media-src 'self' data: blob:; font-src 'self'; connect-src 'self' ws: wss:" ;;
  custom)
    csp=${val[CHATUI_CSP]:-} ;;
  *) echo "render.sh: CHAT_UI must be open-webui, openclaw or custom" >&2; exit 1 ;;
esac
if [ -n "${val[CHATUI_CSP]:-}" ]; then csp=${val[CHATUI_CSP]}; fi
[ -n "$csp" ] || { echo "render.sh: CHAT_UI=custom needs CHATUI_CSP" >&2; exit 1; }
case "$csp" in *'"'*) echo "render.sh: CHATUI_CSP must not contain double quotes" >&2; exit 1 ;; esac
val[CHATUI_CSP]=$csp
# The redirect keeps a non-standard HTTPS port (tests, staging); 443 needs none.
if [ "${val[HTTPS_PORT]}" = 443 ]; then val[HTTPS_SUFFIX]=; else val[HTTPS_SUFFIX]=":${val[HTTPS_PORT]}"; fi
out=$(cat "$template")
val[USER_ID]=${val[USER_ID]:-}
for k in "${vars[@]}" HTTPS_SUFFIX GATEWAY_SERVERS USER_ID ACCESS_LOG ERROR_LOG CHATUI_MAX_BODY ASSET_CACHE_REGEX CHATUI_CSP; do
  out=${out//@${k}@/${val[$k]}}
done
if grep -q '@[A-Z_]*@' <<<"$out"; then
  echo "render.sh: unreplaced placeholders: $(grep -o '@[A-Z_]*@' <<<"$out" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
printf '%s\n' "$out"
