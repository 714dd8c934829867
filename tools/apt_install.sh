#!/usr/bin/env bash
# Install Debian packages quietly, without recommends, as root or through sudo: apt_install.sh PACKAGE...
# Used by install_browser.sh and install_tex.sh.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
