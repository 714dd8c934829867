#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian's packages, for tests/test_browser.py.
# Does nothing when both are already on PATH. Needs root or sudo.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" chromium chromium-driver fonts-dejavu-core
chromium --version
chromedriver --version
