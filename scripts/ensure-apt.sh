#!/usr/bin/env bash
# ensure-apt.sh BINARY PACKAGE: make sure BINARY is installed, from Debian's PACKAGE if missing.
# The browser tests drive Debian's chromium (never a downloaded browser) and the load-balancer
# tests run Debian's nginx. Idempotent; prints one line.
set -euo pipefail
binary="$1" package="$2"
PATH="$PATH:/usr/sbin"  # nginx lives there, which is not on every user's PATH

version() { "$binary" --version 2>/dev/null || "$binary" -v 2>&1 || echo "$binary"; }

if command -v "$binary" >/dev/null; then
  echo "$package: $(version | head -n1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "$package is missing and installing it needs root: apt-get install $package" >&2
    exit 1
  fi
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# (On a host running systemd, Debian's nginx package also
# starts a system nginx on port 80, which the tests never use.)
if ! { $SUDO apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$package"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "$package: apt-get install failed (output above)" >&2
  exit 1
fi
echo "$package: installed $(version | head -n1)"
