#!/usr/bin/env bash
# Sourced by test.sh: what the container tier and the shell lint need.
#
# provision_test_tools: where we are root and have apt-get (CI and throwaway
# machines), install shellcheck, debootstrap and docker.io when missing.
# Set QWENVL_TEST_PROVISION=0 to never install anything.
#
# start_docker_engine: start dockerd when no engine answers and we may (root);
# sets QWENVL_STARTED_DOCKERD to its pid, or exports QWENVL_DOCKER_START_ERROR
# (the tests report it as the reason the container tier is skipped).
# stop_docker_engine: stop a dockerd that start_docker_engine started.
# All output goes to stderr.

provision_test_tools() {
  local want=()
  [ "${QWENVL_TEST_PROVISION:-1}" != 0 ] || return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
  command -v shellcheck >/dev/null 2>&1 || want+=(shellcheck)
  command -v debootstrap >/dev/null 2>&1 || want+=(debootstrap)
  command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || want+=(docker.io)
  [ "${#want[@]}" -gt 0 ] || return 0
  echo "test.sh: installing ${want[*]} (for the shell lint and the container tier)..." >&2
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}"; } \
      >/tmp/qwenvl-apt.log 2>&1; then
    echo "test.sh: warning: apt-get install ${want[*]} failed (see /tmp/qwenvl-apt.log)" >&2
  fi
}

start_docker_engine() {
  QWENVL_STARTED_DOCKERD=""
  command -v docker >/dev/null 2>&1 || { export QWENVL_DOCKER_START_ERROR="the docker command is not installed"; return 0; }
  docker info >/dev/null 2>&1 && return 0
  if [ "${QWENVL_TEST_PROVISION:-1}" = 0 ] || [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null 2>&1; then
    export QWENVL_DOCKER_START_ERROR="no Docker engine is running, and this script may not start one (needs root and dockerd)"
    return 0
  fi
  local log=/tmp/qwenvl-dockerd.log i
  echo "test.sh: starting dockerd (log: $log)..." >&2
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
