#!/usr/bin/env bash
# Run the Qwen3-VL command line. All arguments pass through to predict.py;
# stdout carries only results and the exit code is the CLI's.
#   bash predict.sh --image test_images/sample.jpg --task caption
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/venv.sh
. "$HERE/scripts/venv.sh"
VENV="${QWENVL_VENV:-$HERE/.venv}"
ensure_venv "$VENV" "$HERE/requirements.txt"
exec "$VENV/bin/python" "$HERE/predict.py" "$@"
