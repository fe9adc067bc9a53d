#!/usr/bin/env bash
# Installs the system packages that the end-to-end tests use, only when missing.
# Idempotent and quiet when everything is present. Needs root (or sudo) to install.
set -euo pipefail

# package name -> a command that proves it is installed
declare -A NEEDED=(
  [curl]=curl
  [chromium]=chromium
  # ip: brings up loopback in the network namespaces some tests make for themselves
  [iproute2]=ip
  # node, npm: the official Node SDKs, Claude Code and Codex CLI (tests/clients/node)
  [nodejs]=node
  [npm]=npm
  # pebble, pebble-challtestsrv: an ACME test CA and the DNS it asks (ACME DNS-01 tests)
  [pebble]=pebble-challtestsrv
  # certutil: puts pebble's root in a test Chromium's own NSS database (tests/e2e/test_relay_acme.py)
  [libnss3-tools]=certutil
)

missing=()
for pkg in "${!NEEDED[@]}"; do
  command -v "${NEEDED[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
