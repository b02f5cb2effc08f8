#!/usr/bin/env bash
# Build the Docker image of the Qwen3-VL command line (see docs/docker.md).
#
#   bash build.sh [--tag TAG] [--base-image IMAGE] [--ca-bundle FILE]
#                 [--bake-model DIR] [--no-cache] [-- DOCKER_BUILD_ARGS...]
#
#   --tag TAG           image tag (default: $QWENVL_IMAGE, else qwenvl:latest)
#   --base-image IMAGE  any image whose python3 runs the pinned torch (default:
#                       $BASE_IMAGE, else the Dockerfile's PyTorch CUDA image)
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
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker_lib.sh
. "$HERE/scripts/docker_lib.sh"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }
die() { echo "build.sh: $*" >&2; exit "${2:-1}"; }

tag="$(qwenvl_image)"
base="${BASE_IMAGE:-}"
ca="${QWENVL_CA_BUNDLE:-}"
model=""
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
    --no-cache) extra+=(--no-cache); shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) usage; die "unknown option: $1" 2 ;;
  esac
done
[ -z "$ca" ] || [ -r "$ca" ] || die "--ca-bundle: cannot read $ca" 2
if [ -n "$ca" ] && ! grep -q 'BEGIN CERTIFICATE' "$ca"; then die "--ca-bundle: $ca holds no PEM certificate" 2; fi
[ -z "$model" ] || [ -f "$model/config.json" ] || die "--bake-model: $model is not a checkpoint folder (no config.json)" 2

qwenvl_docker_ok || die "$DOCKER_UNAVAILABLE"
qwenvl_pick_builder

args=(--tag "$tag" --label "org.qwenvl.source=$(qwenvl_source_hash "$HERE")")
[ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST HTTP_PROXY HTTPS_PROXY NO_PROXY \
           http_proxy https_proxy no_proxy; do
  if [ -n "${!var:-}" ]; then args+=(--build-arg "$var"); fi
done

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
echo "build.sh: building $tag${base:+ from $base}..." >&2
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
