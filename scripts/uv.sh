# Sourced: make sure the pinned uv is in .tools/ (bootstrapped once with pip) and set $UV to it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
UV_VERSION="0.13.9"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "agentchat needs Python 3.11 or newer (tried: $PYTHON). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if ! .tools/bin/uv --version 2>/dev/null | grep -q "^uv $UV_VERSION\b"; then
  "$PYTHON" -m venv .tools
  .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV="$ROOT/.tools/bin/uv"
