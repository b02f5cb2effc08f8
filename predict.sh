#!/usr/bin/env bash
# Run the Qwen3-VL command line: in Docker when a Docker engine is available,
# else in a local virtual environment (.venv, made on first use). All
# arguments pass through to predict.py; stdout carries only results and the
# exit code is the CLI's.
#   bash predict.sh --image test_images/sample.jpg --task caption
#   bash predict.sh --venv --image photo.jpg      # force a mode (or --docker)
#
# QWENVL_MODE=auto|docker|venv picks the mode (default auto: Docker when its
# engine answers and the image exists or can be built; on macOS always the
# local environment, whose PyTorch can use the Apple GPU). Container settings
# (QWENVL_IMAGE, QWENVL_GPUS, QWENVL_HF_CACHE, ...) are described in
# scripts/docker_predict.sh and docs/docker.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mode="${QWENVL_MODE:-auto}"
while [ $# -gt 0 ]; do  # predict.sh's own flags come first
  case "$1" in
    --docker) mode=docker; shift ;;
    --venv|--no-docker) mode=venv; shift ;;
    *) break ;;
  esac
done

quiet=0
for arg in "$@"; do case "$arg" in -q|--quiet) quiet=1 ;; esac; done
note() { [ "$quiet" = 1 ] || echo "predict.sh: $*" >&2; }

run_venv() {
  # shellcheck source=scripts/venv.sh
  . "$HERE/scripts/venv.sh"
  local venv="${QWENVL_VENV:-$HERE/.venv}"
  ensure_venv "$venv" "$HERE/requirements.txt"
  exec "$venv/bin/python" "$HERE/predict.py" "$@"
}

run_docker() {
  # shellcheck source=scripts/docker_lib.sh
  . "$HERE/scripts/docker_lib.sh"
  # shellcheck source=scripts/docker_predict.sh
  . "$HERE/scripts/docker_predict.sh"
  docker_predict "$HERE" "$@"  # returns only when the image cannot be had
}

case "$mode" in
  venv)
    run_venv "$@" ;;
  docker)
    # shellcheck source=scripts/docker_lib.sh
    . "$HERE/scripts/docker_lib.sh"
    if [ "${QWENVL_DOCKER_DRY_RUN:-0}" != 1 ] && ! qwenvl_docker_ok; then
      echo "predict.sh: QWENVL_MODE=docker, but $DOCKER_UNAVAILABLE" >&2
      exit 1
    fi
    run_docker "$@" || { echo "predict.sh: the Docker image could not be built (see above)" >&2; exit 1; } ;;
  auto)
    # shellcheck source=scripts/docker_lib.sh
    . "$HERE/scripts/docker_lib.sh"
    if qwenvl_is_macos; then
      note "macOS: running in the local virtual environment, not Docker (containers cannot use the Apple GPU; QWENVL_MODE=docker forces Docker)"
    elif qwenvl_docker_ok; then
      run_docker "$@" || note "the Docker image could not be built: running in the local virtual environment instead (QWENVL_MODE=venv skips Docker)"
    else
      note "Docker is not available ($DOCKER_UNAVAILABLE): running in the local virtual environment"
    fi
    run_venv "$@" ;;
  *)
    echo "predict.sh: QWENVL_MODE must be auto, docker or venv, not '$mode'" >&2
    exit 2 ;;
esac
