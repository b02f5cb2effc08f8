#!/usr/bin/env bash
# Sourced by test.sh: what the container tier and the shell lint need.
#
# Nothing is installed or started unless asked with QWENVL_TEST_PROVISION=1
# (.ci/run sets it; on a workstation you may not want apt-get or a daemon):
#
# provision_test_tools: as root with apt-get, install shellcheck, debootstrap
# and docker.io when missing.
#
# start_docker_engine: when no engine answers, start dockerd (root only); sets
# QWENVL_STARTED_DOCKERD to its pid. When the engine cannot be had it exports
# QWENVL_DOCKER_START_ERROR, which the tests give as the reason the container
# tier is skipped.
# stop_docker_engine: stop a dockerd that start_docker_engine started.
# All output goes to stderr. Plain bash 3.2 (macOS) compatible.

QWENVL_PROVISION_HINT="QWENVL_TEST_PROVISION=1 bash test.sh"

provision_test_tools() {
  local want=""
  [ "${QWENVL_TEST_PROVISION:-0}" = 1 ] || return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: QWENVL_TEST_PROVISION=1 installs with apt-get as root; not here (install docker.io, debootstrap and shellcheck yourself)" >&2
    return 0
  fi
  command -v shellcheck >/dev/null 2>&1 || want="$want shellcheck"
  command -v debootstrap >/dev/null 2>&1 || want="$want debootstrap"
  command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || want="$want docker.io"
  [ -n "$want" ] || return 0
  echo "test.sh: installing$want (QWENVL_TEST_PROVISION=1: for the shell lint and the container tier)..." >&2
  # shellcheck disable=SC2086  # a list of package names: split on purpose
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $want; } \
      >/tmp/qwenvl-apt.log 2>&1; then
    echo "test.sh: warning: apt-get install$want failed (see /tmp/qwenvl-apt.log)" >&2
  fi
}

start_docker_engine() {
  QWENVL_STARTED_DOCKERD=""
  if [ "${QWENVL_TEST_PROVISION:-0}" != 1 ]; then
    if ! command -v docker >/dev/null 2>&1; then
      export QWENVL_DOCKER_START_ERROR="the docker command is not installed; as root, $QWENVL_PROVISION_HINT installs it and starts dockerd"
    elif ! docker info >/dev/null 2>&1; then
      export QWENVL_DOCKER_START_ERROR="no Docker engine is running; start it, or as root run $QWENVL_PROVISION_HINT to start dockerd for the run"
    fi
    return 0
  fi
  command -v docker >/dev/null 2>&1 || { export QWENVL_DOCKER_START_ERROR="the docker command is not installed (apt-get install docker.io failed or is not available)"; return 0; }
  docker info >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null 2>&1; then
    export QWENVL_DOCKER_START_ERROR="no Docker engine is running, and starting one needs root and dockerd"
    return 0
  fi
  local log=/tmp/qwenvl-dockerd.log i
  echo "test.sh: starting dockerd (QWENVL_TEST_PROVISION=1; log: $log)..." >&2
  dockerd >"$log" 2>&1 &
  QWENVL_STARTED_DOCKERD=$!
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$QWENVL_STARTED_DOCKERD" 2>/dev/null || break
    sleep 0.5
  done
  QWENVL_DOCKER_START_ERROR="dockerd did not start after ${i} tries: $(tail -n 1 "$log" 2>/dev/null)"
  export QWENVL_DOCKER_START_ERROR
  kill "$QWENVL_STARTED_DOCKERD" 2>/dev/null || true
  QWENVL_STARTED_DOCKERD=""
}

stop_docker_engine() {
  [ -n "${QWENVL_STARTED_DOCKERD:-}" ] || return 0
  kill "$QWENVL_STARTED_DOCKERD" 2>/dev/null || true
  local i
  for i in $(seq 1 40); do
    kill -0 "$QWENVL_STARTED_DOCKERD" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "test.sh: warning: dockerd ($QWENVL_STARTED_DOCKERD) still running after ${i} tries" >&2
}
