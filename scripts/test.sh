#!/usr/bin/env bash
# Runs every check and test, exactly as CI does: format, clippy (warnings are errors), unit and
# integration tests (real binaries, real sockets, real Nginx). Installs what the tests need
# when it is missing: Debian's nginx, redis-server, golang-go, valgrind, openssl, nftables, curl, wrk, systemd's
# analyzer and promtool, cargo-deb, cargo-deny, plus a Python venv with the official OpenAI, Ollama and Anthropic clients for the
# end-to-end client checks.
# Ends with the instruction-count budget (callgrind, scripts/instructions.sh) and a
# seconds-long smoke run of the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Go builds the differential tests' stand-in Ollama (tests/ollama-go), which decodes bodies
# with Go's own encoding/json, as Ollama does.
command -v go >/dev/null 2>&1 || missing+=(golang-go)
# promtool checks the shipped alerting rules (Debian ships it in the prometheus package; the
# policy-rc.d below keeps that server from starting).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# callgrind counts the instructions each route costs, against a committed budget.
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # policy-rc.d keeps the package from starting a system-wide nginx on :80 during install.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# cargo-deb builds the Debian package the deploy tests install into a throwaway root.
if ! command -v cargo-deb >/dev/null 2>&1; then
  say "installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version '^3.8'
fi

# cargo-deny checks the dependency graph against deny.toml (licenses, banned crates, sources).
if ! command -v cargo-deny >/dev/null 2>&1; then
  say "installing cargo-deny"
  # A debug build: 80 s instead of 200 s on 2 cores, and its check still takes 2 s.
  cargo install --debug --locked --quiet cargo-deny --version '^0.20'
fi

VENV="${QWEN_TEST_VENV:-$PWD/target/test-venv}"
# The official clients, unmodified: OpenAI's, Ollama's and Anthropic's Python libraries.
if ! "$VENV/bin/python" -c 'import openai, ollama, anthropic' >/dev/null 2>&1; then
  say "creating the Python venv with the OpenAI, Ollama and Anthropic clients ($VENV)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    'openai>=1.66,<3' 'ollama>=0.4,<1' 'anthropic>=0.40,<3'
fi
export QWEN_TEST_PYTHON="$VENV/bin/python"
export PATH="$PATH:/usr/sbin:/sbin"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

say "cargo deny (licenses, bans, sources; the advisories check needs the RustSec database from GitHub)"
cargo deny --log-level error check bans licenses sources

say "cargo build (the gateway and the test helpers in tools/, which the tests start)"
cargo build --locked --workspace --bins

say "cargo test"
cargo test --locked --workspace --all-targets

say "instructions per request against the committed budget (callgrind; fails over +5%)"
bash scripts/instructions.sh

say "benchmark smoke (keeps scripts/bench.sh working; its numbers mean nothing)"
BENCH_OUT="$PWD/target/bench-smoke" bash scripts/bench.sh --smoke

say "all checks passed"
