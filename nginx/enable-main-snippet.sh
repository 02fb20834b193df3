#!/bin/sh
# Enables the site's main-context snippet (worker_shutdown_timeout) in ROOT/etc/nginx/
# modules-enabled, unless nginx.conf or another module file already sets the directive: Nginx
# refuses a duplicate, and a host whose nginx.conf sets it would not start at all.
#   enable-main-snippet.sh ROOT SNIPPET   (ROOT "" for the live system; SNIPPET relative to
#   modules-enabled, so that the link holds inside a DESTDIR or DPKG_ROOT too)
set -e
root=$1
snippet=$2
link=$root/etc/nginx/modules-enabled/90-qwen-gateway-main.conf
mkdir -p "$root/etc/nginx/modules-enabled"
for f in "$root/etc/nginx/nginx.conf" "$root"/etc/nginx/modules-enabled/*.conf; do
  [ -f "$f" ] || continue
  [ "$f" = "$link" ] && continue
  if grep -Eq '^[[:space:]]*worker_shutdown_timeout[[:space:]]' "$f"; then
    rm -f "$link"
    echo "qwen-gateway: ${f#"$root"} already sets worker_shutdown_timeout; keep it at 10m or more so that Nginx reloads do not cut streams (see $snippet)" >&2
    exit 0
  fi
done
ln -sfn "$snippet" "$link"
