#!/usr/bin/env bash
# Re-lock the dependency set, then `make test`:
#   scripts/lock.sh --upgrade                       every package to the newest pyproject.toml allows
#   scripts/lock.sh --upgrade-package cryptography  one package (a security fix), nothing else moves
#   scripts/lock.sh                                 after editing pyproject.toml: the least change
set -euo pipefail
source "$(dirname "$0")/uv.sh"
"$UV" lock "$@"
