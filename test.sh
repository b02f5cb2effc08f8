#!/usr/bin/env bash
# Run the test suite on a tiny random-weight Qwen3-VL (no GPU, no network to
# the Hugging Face hub needed). Extra arguments go to pytest.
#   bash test.sh            # everything
#   bash test.sh -k pdf     # a subset
#   bash test.sh -m 'not docker'   # without the container tier
# The container tier (tests/test_docker.py) runs when a Docker engine answers
# (and, for its local base image, as root with debootstrap); otherwise it is
# reported as skipped, with the reason and the command that enables it.
# Nothing is installed or started unless asked:
#   QWENVL_TEST_PROVISION=1 bash test.sh   # as root: apt-get install docker.io,
#                                          # debootstrap, shellcheck; start dockerd
# .ci/run does that on a fresh base image (docs/testing.md).
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
