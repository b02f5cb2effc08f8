#!/usr/bin/env bash
# Run the test suite on a tiny random-weight Qwen3-VL (no GPU, no network to
# the Hugging Face hub needed). Extra arguments go to pytest.
#   bash test.sh            # everything
#   bash test.sh -k pdf     # a subset
#   bash test.sh -m 'not docker'   # without the container tier
# The container tier (tests/test_docker.py) runs when a Docker engine answers;
# as root with apt-get (CI), this script installs docker.io, debootstrap and
# the shell linter when missing and starts dockerd for the run
# (QWENVL_TEST_PROVISION=0 turns that off). Without an engine that tier is reported as skipped, with why.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
# shellcheck source=scripts/venv.sh
. "$HERE/scripts/venv.sh"
# shellcheck source=scripts/test_tools.sh
. "$HERE/scripts/test_tools.sh"
VENV="${QWENVL_VENV:-$HERE/.venv}"
ensure_venv "$VENV" "$HERE/requirements-dev.txt"
provision_test_tools
start_docker_engine
trap stop_docker_engine EXIT
status=0
"$VENV/bin/python" -m pytest tests "$@" || status=$?
exit "$status"
