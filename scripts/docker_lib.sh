#!/usr/bin/env bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this one
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
      printf '%s\n' Dockerfile requirements.txt predict.py tools/make_tiny_model.py tools/qwen_bpe.py \
        tools/qwen3_vl_chat_template.jinja
      find qwenvl -type f ! -name '*.pyc' ! -path '*/__pycache__/*'
    } | LC_ALL=C sort | while IFS= read -r f; do
      [ -f "$f" ] && printf '%s\n' "$f" && cat "$f"
    done | qwenvl_sha256 | cut -c1-16
  )
}

# Is a Docker engine reachable (installed, running, and we may talk to it)?
# Sets DOCKER_UNAVAILABLE to the reason when not.
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

# --- base images and GPUs ------------------------------------------------------
# The Dockerfile's default base (CUDA 13.0: NVIDIA driver 580 or newer), the
# CUDA 12.6 one for older drivers (525 or newer), and the CPU-only variant's
# base, which gets PyTorch's CPU wheels from QWENVL_CPU_TORCH_INDEX.
QWENVL_BASE_CUDA13="pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime"
QWENVL_BASE_CUDA126="pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime"
QWENVL_BASE_CPU="python:3.11-slim-bookworm"
QWENVL_CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"
QWENVL_DRIVER_CUDA13=580
QWENVL_DRIVER_CUDA126=525

# The host's NVIDIA driver version (e.g. 575.57.08), from nvidia-smi; fails
# when there is none.
qwenvl_driver_version() {
  local v
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  v="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' \r')" || return 1
  case "$v" in [0-9]*.*) echo "$v" ;; *) return 1 ;; esac
}

# The lowest driver major version that an image variant's CUDA runs on
# (cuda13.0, cuda12.6); empty for cpu and unknown variants.
qwenvl_variant_min_driver() {
  case "$1" in
    cuda13.0) echo "$QWENVL_DRIVER_CUDA13" ;;
    cuda12.6) echo "$QWENVL_DRIVER_CUDA126" ;;
    *) echo "" ;;
  esac
}

# Can containers here use an NVIDIA GPU? Sets QWENVL_GPU_STATE to
#   runtime     the engine lists the nvidia runtime
#   toolkit     nvidia-smi answers and the NVIDIA container toolkit is installed
#   no-toolkit  nvidia-smi answers, but Docker cannot hand the GPU to containers
#   none        no NVIDIA GPU here
# $1: the engine's runtimes, as `docker info --format '{{json .Runtimes}}'` prints them.
qwenvl_gpu_state() {
  local info="$1"
  if printf '%s' "$info" | grep -q '"nvidia'; then
    QWENVL_GPU_STATE=runtime
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    if command -v nvidia-container-cli >/dev/null 2>&1 || command -v nvidia-ctk >/dev/null 2>&1; then
      QWENVL_GPU_STATE=toolkit
    else
      QWENVL_GPU_STATE=no-toolkit
    fi
  else
    QWENVL_GPU_STATE=none
  fi
}
