#!/usr/bin/env bash
# Installs qwen-gateway and its deployment bundle. Idempotent: run it again after an upgrade.
#
#   sudo scripts/install.sh                    # onto this machine
#   DESTDIR=/tmp/stage scripts/install.sh      # into a staging root (tests, packaging)
#
# Installs: the binary, the service user (real installs only), /etc/qwen-gateway/policy.yaml
# (never overwriting an existing one; the new default goes beside it as policy.yaml.dist), the
# systemd unit, the Nginx site rendered from nginx/site.env (or the environment), the certbot
# deploy hook, the firewall ruleset and the ops scripts.
#
# Environment: DESTDIR (default: /), BIN (a prebuilt qwen-gateway; default: build release),
# and the nginx/site.env variables (DOMAIN, SSL_CERT, SSL_KEY, ...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
root=${DESTDIR%/}

step() { printf '  %s\n' "$*"; }

if [ -z "${BIN:-}" ]; then
  if [ ! -x "$repo/target/release/qwen-gateway" ]; then
    echo "Building the release binary..."
    (cd "$repo" && cargo build --release --locked --bin qwen-gateway)
  fi
  BIN="$repo/target/release/qwen-gateway"
fi
[ -x "$BIN" ] || { echo "install.sh: $BIN is not an executable" >&2; exit 1; }

echo "Installing qwen-gateway into ${DESTDIR:-/}"
install -d "$root/usr/local/bin" "$root/etc/qwen-gateway" "$root/etc/systemd/system" \
  "$root/etc/nginx/sites-available" "$root/etc/nginx/sites-enabled" "$root/etc/nginx/snippets" \
  "$root/etc/nginx/modules-enabled" "$root/etc/letsencrypt/renewal-hooks/deploy" \
  "$root/etc/nftables.d" "$root/var/www/letsencrypt"

install -m 0755 "$BIN" "$root/usr/local/bin/qwen-gateway"
step "binary: /usr/local/bin/qwen-gateway"

if [ -z "$DESTDIR" ] && ! id -u qwen-gateway >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin qwen-gateway
  step "user: qwen-gateway (system)"
fi

policy="$root/etc/qwen-gateway/policy.yaml"
if [ -e "$policy" ]; then
  install -m 0640 "$repo/policy/policy.yaml" "$policy.dist"
  step "policy: kept the existing /etc/qwen-gateway/policy.yaml (new default: policy.yaml.dist)"
else
  install -m 0640 "$repo/policy/policy.yaml" "$policy"
  step "policy: /etc/qwen-gateway/policy.yaml (replace the demo key before going live)"
fi
if [ -z "$DESTDIR" ]; then
  chown root:qwen-gateway "$root/etc/qwen-gateway" "$policy"
  chmod 0750 "$root/etc/qwen-gateway"
fi
"$root/usr/local/bin/qwen-gateway" check --config "$policy" >/dev/null \
  || echo "install.sh: WARNING: $policy does not pass 'qwen-gateway check'" >&2

install -m 0644 "$repo/systemd/qwen-gateway.service" "$root/etc/systemd/system/qwen-gateway.service"
step "unit: /etc/systemd/system/qwen-gateway.service"

"$repo/nginx/render.sh" "$repo/nginx/qwen-gateway.conf.template" > "$root/etc/nginx/sites-available/qwen-gateway.conf.new"
mv "$root/etc/nginx/sites-available/qwen-gateway.conf.new" "$root/etc/nginx/sites-available/qwen-gateway.conf"
ln -sfn ../sites-available/qwen-gateway.conf "$root/etc/nginx/sites-enabled/qwen-gateway.conf"
install -m 0644 "$repo/nginx/snippets/qwen-gateway-security-headers.conf" "$root/etc/nginx/snippets/"
install -m 0644 "$repo/nginx/snippets/qwen-gateway-api.conf" "$root/etc/nginx/snippets/"
install -m 0644 "$repo/nginx/snippets/qwen-gateway-main.conf" "$root/etc/nginx/qwen-gateway-main.conf"
"$repo/nginx/enable-main-snippet.sh" "$root" ../qwen-gateway-main.conf
step "nginx: sites-available/qwen-gateway.conf (enabled), snippets, worker_shutdown_timeout"

install -m 0755 "$repo/scripts/certbot-deploy-hook" "$root/etc/letsencrypt/renewal-hooks/deploy/50-qwen-gateway-nginx"
step "certbot: renewal-hooks/deploy/50-qwen-gateway-nginx"

install -m 0644 "$repo/scripts/firewall/qwen-gateway.nft" "$root/etc/nftables.d/qwen-gateway.nft"
step "firewall: /etc/nftables.d/qwen-gateway.nft (not applied; see the README)"

for s in "$repo"/scripts/ops/qwen-gateway-*; do
  install -m 0755 "$s" "$root/usr/local/bin/$(basename "$s")"
done
step "ops: /usr/local/bin/qwen-gateway-{report,health,cert-expiry,latency}"

if [ -z "$DESTDIR" ]; then
  systemctl daemon-reload 2>/dev/null || true
  cat <<'NEXT'

Next steps:
  1. Edit /etc/qwen-gateway/policy.yaml (keys: qwen-gateway hash-key), then: qwen-gateway check
  2. systemctl enable --now qwen-gateway
  3. certbot certonly --webroot -w /var/www/letsencrypt -d <domain>; nginx -t && systemctl reload nginx
  4. Review /etc/nftables.d/qwen-gateway.nft, then: nft -f /etc/nftables.d/qwen-gateway.nft
NEXT
fi
