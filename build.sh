#!/usr/bin/env bash
# Build the Docker image of the Qwen3-VL command line (see docs/docker.md).
#
#   bash build.sh [--cpu | --cuda] [--tag TAG] [--base-image IMAGE]
#                 [--torch-index URL] [--ca-bundle FILE] [--bake-model DIR]
#                 [--no-cache] [-- DOCKER_BUILD_ARGS...]
#
#   --cpu               CPU-only image: a slim Python base and PyTorch's CPU
#                       wheels (about a fifth of the CUDA image's size)
#   --cuda              CUDA image: PyTorch's CUDA 13.0 runtime image, or its
#                       CUDA 12.6 one when this host's NVIDIA driver is older
#                       than 580. Default: --cuda when Docker here can use an
#                       NVIDIA GPU, else --cpu
#   --tag TAG           image tag (default: $QWENVL_IMAGE, else qwenvl:latest)
#   --base-image IMAGE  any image whose python3 runs the pinned torch (default:
#                       $BASE_IMAGE, else as above); with --cpu, a Python base
#                       that gets the CPU wheels
#   --torch-index URL   where --cpu gets torch and torchvision (default:
#                       $QWENVL_TORCH_INDEX_URL, else PyTorch's CPU index)
#   --ca-bundle FILE    extra CA certificates (PEM) for a TLS-intercepting proxy,
#                       used by pip during the build and by downloads at run
#                       time (default: $QWENVL_CA_BUNDLE); or drop *.crt files
#                       in docker/certs/
#   --bake-model DIR    copy a model checkpoint folder into the image, used by
#                       default and offline (for hosts without Hub access)
#   --no-cache          rebuild every layer
#
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST (private mirrors) and
# HTTP_PROXY, HTTPS_PROXY, NO_PROXY pass through to the build when set.
# Progress goes to stderr; the image tag is printed on stdout at the end.
# QWENVL_DOCKER_DRY_RUN=1 prints the `docker build` command, one word a line,
# and builds nothing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker_lib.sh
. "$HERE/scripts/docker_lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
note() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: $1" >&2; exit "${2:-1}"; }

tag="$(qwenvl_image)"
base="${BASE_IMAGE:-}"
ca="${QWENVL_CA_BUNDLE:-}"
model=""
variant=auto
torch_index="${QWENVL_TORCH_INDEX_URL:-}"
dry="${QWENVL_DOCKER_DRY_RUN:-0}"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || die "--tag needs a value" 2; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --base-image) [ $# -ge 2 ] || die "--base-image needs a value" 2; base="$2"; shift 2 ;;
    --base-image=*) base="${1#*=}"; shift ;;
    --ca-bundle) [ $# -ge 2 ] || die "--ca-bundle needs a value" 2; ca="$2"; shift 2 ;;
    --ca-bundle=*) ca="${1#*=}"; shift ;;
    --bake-model) [ $# -ge 2 ] || die "--bake-model needs a value" 2; model="$2"; shift 2 ;;
    --bake-model=*) model="${1#*=}"; shift ;;
    --cpu) variant=cpu; shift ;;
    --cuda|--gpu) variant=cuda; shift ;;
    --torch-index) [ $# -ge 2 ] || die "--torch-index needs a value" 2; torch_index="$2"; shift 2 ;;
    --torch-index=*) torch_index="${1#*=}"; shift ;;
    --no-cache) extra+=(--no-cache); shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) die "unknown option: $1 (bash build.sh --help)" 2 ;;
  esac
done
[ -z "$ca" ] || [ -r "$ca" ] || die "--ca-bundle: cannot read $ca" 2
if [ -n "$ca" ] && ! grep -q 'BEGIN CERTIFICATE' "$ca"; then die "--ca-bundle: $ca holds no PEM certificate" 2; fi
[ -z "$model" ] || [ -f "$model/config.json" ] || die "--bake-model: $model is not a checkpoint folder (no config.json)" 2

if [ "$dry" != 1 ]; then
  qwenvl_docker_ok || die "$DOCKER_UNAVAILABLE"
  qwenvl_pick_builder
fi

# Which image: CPU or CUDA, and for CUDA which base the host's driver runs.
if [ "$variant" = auto ]; then
  if [ -n "$base" ]; then
    variant=custom  # a base of the caller's, with torch in it
  else
    qwenvl_gpu_state "$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)"
    case "$QWENVL_GPU_STATE" in
      runtime|toolkit)
        variant=cuda
        if driver="$(qwenvl_driver_version)" && [ "${driver%%.*}" -lt "$QWENVL_DRIVER_CUDA126" ]; then
          variant=cpu  # no CUDA build of the pinned torch runs on it: the CUDA image would only use the CPU
          note "NVIDIA driver $driver is older than $QWENVL_DRIVER_CUDA126 (needed by CUDA 12.6): building the CPU-only image (update the driver for the GPU; --cuda builds the CUDA one anyway)"
        fi ;;
      no-toolkit)
        variant=cpu
        note "this host has an NVIDIA GPU, but Docker cannot use it (no NVIDIA container toolkit): building the CPU-only image (--cuda builds the CUDA one)" ;;
      *)
        variant=cpu
        note "no NVIDIA GPU runtime on this host: building the CPU-only image (--cuda builds the CUDA one)" ;;
    esac
  fi
fi
case "$variant" in
  cpu)
    base="${base:-$QWENVL_BASE_CPU}"
    torch_index="${torch_index:-$QWENVL_CPU_TORCH_INDEX}"
    label=cpu ;;
  cuda)
    label=cuda13.0
    if [ -n "$base" ]; then
      label=cuda  # the caller's CUDA base: its CUDA version is theirs to know
    elif driver="$(qwenvl_driver_version)"; then
      major="${driver%%.*}"
      if [ "$major" -lt "$QWENVL_DRIVER_CUDA13" ]; then
        base="$QWENVL_BASE_CUDA126"
        label=cuda12.6
        note "NVIDIA driver $driver is older than $QWENVL_DRIVER_CUDA13 (needed by CUDA 13.0): using the CUDA 12.6 base image $base"
        if [ "$major" -lt "$QWENVL_DRIVER_CUDA126" ]; then
          note "warning: driver $driver is older than $QWENVL_DRIVER_CUDA126 too: containers will run on the CPU (update the driver, or build with --cpu)"
        fi
      else
        base="$QWENVL_BASE_CUDA13"
        note "NVIDIA driver $driver: using the CUDA 13.0 base image $base"
      fi
    else
      base="$QWENVL_BASE_CUDA13"
      note "no NVIDIA driver found here: using the CUDA 13.0 base image $base (GPU hosts need driver $QWENVL_DRIVER_CUDA13 or newer; --base-image $QWENVL_BASE_CUDA126 for older ones)"
    fi ;;
  custom)
    label=custom ;;
esac

args=(--tag "$tag" --label "org.qwenvl.source=$(qwenvl_source_hash "$HERE")" --label "org.qwenvl.variant=$label")
[ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
if [ "$variant" = cpu ]; then args+=(--build-arg "TORCH_INDEX_URL=$torch_index"); fi
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST HTTP_PROXY HTTPS_PROXY NO_PROXY \
           http_proxy https_proxy no_proxy; do
  if [ -n "${!var:-}" ]; then args+=(--build-arg "$var"); fi
done

if [ "$dry" = 1 ]; then
  printf '%s\n' docker build "${args[@]}" ${extra[@]+"${extra[@]}"} "$HERE"
  exit 0
fi

# The extra bundle travels in the build context under a fixed name, so that
# the same bundle keeps the layer cache; it is removed again afterwards.
staged=""
cleanup() { if [ -n "$staged" ]; then rm -f "$staged"; fi; }
trap cleanup EXIT
if [ -n "$ca" ]; then
  staged="$HERE/docker/certs/zz-build-ca-bundle.pem"
  cp "$ca" "$staged"
  chmod 644 "$staged"
fi

start=$SECONDS
note "building $tag ($label)${base:+ from $base}..."
docker build "${args[@]}" ${extra[@]+"${extra[@]}"} "$HERE" >&2 || die "docker build failed"

if [ -n "$model" ]; then
  # A second, small build whose context is the model folder alone.
  model="$(cd "$model" && pwd -P)"
  # Checkpoints are often saved 0600: a first stage makes them readable to
  # whichever uid runs the container, so that the image holds one copy.
  dockerfile="$(mktemp "${TMPDIR:-/tmp}/qwenvl-model.XXXXXX")"
  # shellcheck disable=SC2016  # Dockerfile lines, expanded by docker
  printf '%s\n' 'ARG IMAGE' 'FROM ${IMAGE} AS model' 'USER root' 'COPY . /opt/qwenvl/model/' \
    'RUN chmod -R a+rX /opt/qwenvl/model' 'FROM ${IMAGE}' \
    'COPY --from=model /opt/qwenvl/model/ /opt/qwenvl/model/' \
    'ENV QWENVL_MODEL=/opt/qwenvl/model HF_HUB_OFFLINE=1' >"$dockerfile"
  echo "build.sh: baking $model into $tag..." >&2
  docker build --tag "$tag" --build-arg "IMAGE=$tag" --label "org.qwenvl.model=$(basename "$model")" \
    -f "$dockerfile" "$model" >&2 || { rm -f "$dockerfile"; die "docker build (model) failed"; }
  rm -f "$dockerfile"
fi
echo "build.sh: built $tag in $((SECONDS - start)) s" >&2
echo "$tag"
