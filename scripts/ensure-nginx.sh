#!/usr/bin/env bash
# Make sure an nginx binary is on PATH for tests/test_deploy.py (it runs deploy/nginx's config in
# front of a local server). Installs Debian's `nginx` if missing. Idempotent; prints one line.
set -euo pipefail
# Debian installs it in /usr/sbin, which is not on every user's PATH; the tests look there too.
PATH="$PATH:/usr/sbin"

if command -v nginx >/dev/null; then
  echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "nginx is missing and installing it needs root: apt-get install nginx" >&2
    exit 1
  fi
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# --no-install-recommends: the binary is all the tests need. On a host running systemd the
# package also starts a system nginx on port 80, which the tests never use
# (`systemctl disable --now nginx` stops it); in containers nothing is started.
if ! { $SUDO apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "nginx: apt-get install failed (output above)" >&2
  exit 1
fi
if ! command -v nginx >/dev/null; then
  echo "nginx: apt-get install succeeded but no nginx binary was found" >&2
  exit 1
fi
echo "nginx: installed $(nginx -v 2>&1 | sed 's/^nginx version: //')"
