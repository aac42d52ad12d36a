#!/usr/bin/env bash
# The browser test drives Debian's Chromium through Playwright (no browser download).
# Installs chromium when it is missing and we may (root with apt); otherwise the browser test says why it cannot run.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test…" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "could not install chromium; the browser test will fail with a message saying so" >&2
else
  echo "chromium is not installed and this user cannot install it: run 'apt-get install chromium' as root for the browser test" >&2
fi
