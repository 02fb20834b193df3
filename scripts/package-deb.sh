#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed with `cargo install --locked cargo-deb`
# when missing): target/debian/qwen-gateway_<version>-1_<arch>.deb.
#
#   scripts/package-deb.sh                # release build
#   scripts/package-deb.sh --profile dev --no-build
#                                         # the tests: package the debug binary already built
#                                         # (a build here would relink it under running tests)
#
# What goes where is [package.metadata.deb] in Cargo.toml; the maintainer scripts are in
# scripts/debian/. install.sh stays for hosts without dpkg.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
out=target/debian
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -o) out=$2; shift 2 ;;
    *) echo "usage: package-deb.sh [--profile release|dev] [--no-build] [-o DIR]" >&2; exit 64 ;;
  esac
done
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version '^3.8'
fi
# Debian packages install into /usr, never /usr/local: the packaged unit says so.
mkdir -p target/deb-assets
sed 's|/usr/local/bin/qwen-gateway|/usr/bin/qwen-gateway|g; s|^# Install: scripts/install.sh.|# Installed by the qwen-gateway Debian package.|' \
  systemd/qwen-gateway.service > target/deb-assets/qwen-gateway.service
if grep -q /usr/local target/deb-assets/qwen-gateway.service; then
  echo "package-deb.sh: the packaged unit still names /usr/local" >&2; exit 1
fi
# The gateway alone (-p): its dependencies get only the gateway's features, not the test
# helpers' too.
if [ "$build" = 1 ]; then
  cargo build --profile "$profile" --locked -p qwen-gateway --bin qwen-gateway
fi
dir=$profile; [ "$profile" = dev ] && dir=debug
[ -x "target/$dir/qwen-gateway" ] || { echo "package-deb.sh: target/$dir/qwen-gateway is not built" >&2; exit 1; }
mkdir -p "$out"
# A release package is stripped and xz-compressed; the tests' debug one is stripped too (a
# 150 MB binary is slow to compress) but compressed fast.
if [ "$profile" = release ]; then pack=(--strip); else pack=(--strip --fast); fi
cargo deb --no-build --locked -p qwen-gateway --profile "$profile" -o "$out" "${pack[@]}"
