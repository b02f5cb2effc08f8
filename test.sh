#!/usr/bin/env bash
# Run the test suite on a tiny random-weight Qwen3-VL (no GPU, no network to
# the Hugging Face hub needed). Extra arguments go to pytest.
#   bash test.sh            # everything
#   bash test.sh -k pdf     # a subset
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
# shellcheck source=scripts/venv.sh
. "$HERE/scripts/venv.sh"
VENV="${QWENVL_VENV:-$HERE/.venv}"
ensure_venv "$VENV" "$HERE/requirements-dev.txt"
exec "$VENV/bin/python" -m pytest tests "$@"
