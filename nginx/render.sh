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
optional=(GATEWAY_ADDRS USER_ID)
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
# The redirect keeps a non-standard HTTPS port (tests, staging); 443 needs none.
if [ "${val[HTTPS_PORT]}" = 443 ]; then val[HTTPS_SUFFIX]=; else val[HTTPS_SUFFIX]=":${val[HTTPS_PORT]}"; fi
out=$(cat "$template")
val[USER_ID]=${val[USER_ID]:-}
for k in "${vars[@]}" HTTPS_SUFFIX GATEWAY_SERVERS USER_ID; do
  out=${out//@${k}@/${val[$k]}}
done
if grep -q '@[A-Z_]*@' <<<"$out"; then
  echo "render.sh: unreplaced placeholders: $(grep -o '@[A-Z_]*@' <<<"$out" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
printf '%s\n' "$out"
