# Sourced by run.sh, test.sh and `make bench`: make .venv match uv.lock exactly, then put it on PATH.
#
# `uv sync --locked` installs the locked versions (checked against their hashes) and refuses to run
# when uv.lock and pyproject.toml disagree: re-lock with scripts/lock.sh (README, "Dependencies").
source "$(dirname "${BASH_SOURCE[0]}")/uv.sh"
EXTRAS="${1:-}"
"$UV" sync --locked --quiet --python "$PYTHON" ${EXTRAS:+--extra "$EXTRAS"}
export PATH="$ROOT/.venv/bin:$PATH"
