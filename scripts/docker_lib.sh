#!/usr/bin/env bash
# Sourced by build.sh, predict.sh and the tests: what the Docker scripts share.
# Plain bash 3.2 (macOS) compatible.

# shellcheck source=scripts/portable.sh
. "$(dirname "${BASH_SOURCE[0]}")/portable.sh"

# The image tag, overridable with QWENVL_IMAGE.
qwenvl_image() {
  echo "${QWENVL_IMAGE:-qwenvl:latest}"
}

# A hash of the files the image is built from (those .dockerignore lets in,
# except certificates). build.sh stores it as a label so that predict.sh can
# tell when the image is older than the code.
qwenvl_source_hash() {
  local root="$1"
  (
    cd "$root" || exit 1
    {
      printf '%s\n' Dockerfile requirements.txt predict.py tools/make_tiny_model.py
      find qwenvl -type f ! -name '*.pyc' ! -path '*/__pycache__/*'
    } | LC_ALL=C sort | while IFS= read -r f; do
      [ -f "$f" ] && printf '%s\n' "$f" && cat "$f"
    done | qwenvl_sha256 | cut -c1-16
  )
}

# Is a Docker engine reachable (installed, running, and we may talk to it)?
# Sets DOCKER_UNAVAILABLE to the reason when not.
# shellcheck disable=SC2034  # DOCKER_UNAVAILABLE is read by the callers
qwenvl_docker_ok() {
  DOCKER_UNAVAILABLE=""
  if ! command -v docker >/dev/null 2>&1; then
    DOCKER_UNAVAILABLE="the docker command is not installed"
    return 1
  fi
  local err
  if ! err="$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
    DOCKER_UNAVAILABLE="the Docker engine is not reachable: $(printf '%s' "$err" | head -n 1)"
    return 1
  fi
}

# Use the classic builder where BuildKit's buildx plugin is missing (as with
# Debian's docker.io): `docker build` would fail outright otherwise.
qwenvl_pick_builder() {
  if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
  fi
}
