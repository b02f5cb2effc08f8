#!/usr/bin/env bash
# Sourced by predict.sh: run the command line inside the Docker image.
#
# Every host path named in the arguments is bind-mounted at the same absolute
# path inside the container (inputs read-only, the folders outputs go to
# read-write), the current folder is mounted and is the working folder (so
# relative paths work), the Hugging Face cache is shared with the host, and
# the container runs as the calling user, so outputs belong to that user.
# Plain bash 3.2 (macOS) compatible.
#
# Settings (environment):
#   QWENVL_IMAGE        image tag (default qwenvl:latest); built on first use
#   QWENVL_GPUS         auto (default: all GPUs when Docker has the NVIDIA
#                       runtime, the image is a CUDA build and the driver is
#                       new enough for its CUDA), none (CPU), or a --gpus
#                       value (all, device=1)
#   QWENVL_HF_CACHE     host folder for the Hugging Face cache (default
#                       $HF_HOME, else ~/.cache/huggingface)
#   QWENVL_DOCKER_USER  uid:gid the container runs as (default: yours)
#   QWENVL_DOCKER_ENV   more variable names to pass through, space-separated
#   QWENVL_DOCKER_DRY_RUN=1  print the docker command, one word a line; run nothing

# --- the arguments that name host paths --------------------------------------
# What the container needs for each (a "+" after the kind: several values):
#   in      read-only: the file or folder itself (- URLs and data: are skipped)
#   out     read-write: the folder the file goes into (the CLI creates folders)
#   outdir  read-write: the folder itself
#   model   read-only, when it is an existing folder (else it is a hub id)
#   batch   read-only: files, folders, a glob's fixed leading folder, @lists
#           and the paths they list
# A new flag that takes a path needs one line here; tests/test_docker.py checks
# that these are exactly the CLI parser's path-taking flags (_qv_flag_table
# prints the table).
_QV_FLAG_TABLE="--image in
--video in
--schema in
--images in+
--model model
--output out
-o out
--history out
--annotate out
--output-dir outdir
--batch batch+"

_qv_flag_table() {
  printf '%s\n' "$_QV_FLAG_TABLE"
}

_qv_flag_kind() {  # sets KIND for a path-taking flag; fails for any other argument
  local flag kind
  while read -r flag kind; do
    if [ "$flag" = "$1" ]; then
      KIND="$kind"
      return 0
    fi
  done <<EOF_TABLE
$_QV_FLAG_TABLE
EOF_TABLE
  return 1
}

# Variables passed through to the container when set.
_QV_ENV_VARS="HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HF_ENDPOINT
  HF_HUB_DISABLE_TELEMETRY QWENVL_MODEL QWENVL_INT8_CACHE CUDA_VISIBLE_DEVICES
  HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy"

# Paths the image needs for itself: never mounted over, nor any folder above
# them; and nothing is mounted inside the system ones.
_QV_ESSENTIAL="/bin /sbin /lib /lib64 /usr/bin /usr/lib /usr/local/bin /usr/local/lib /etc /opt/qwenvl
  /opt/venv /opt/conda /home/app /cache/huggingface /var/lib /run"
_QV_SYSTEM="/bin /sbin /lib /lib64 /usr/bin /usr/lib /usr/local/bin /usr/local/lib /etc /opt/qwenvl
  /opt/venv /opt/conda /home/app /cache /proc /sys /dev /run"

_qv_note() { [ "${_QV_QUIET:-0}" = 1 ] || echo "predict.sh: $*" >&2; }

# $1 as an absolute path with . and .. folded textually (the container sees
# the path as written: it has no symlinks on the way).
_qv_lexical() {
  local p="$1" out="" part rest
  case "$p" in /*) ;; *) p="$PWD/$p" ;; esac
  rest="$p/"
  while [ -n "$rest" ]; do
    part="${rest%%/*}"
    rest="${rest#*/}"
    case "$part" in
      ''|.) ;;
      ..) out="${out%/*}" ;;
      *) out="$out/$part" ;;
    esac
  done
  echo "${out:-/}"
}

# The real host path of an existing $1 (symlinks resolved): the mount source.
_qv_physical() {
  if [ -d "$1" ]; then
    (cd "$1" && pwd -P)
  else
    local dir
    dir="$(cd "$(dirname "$1")" && pwd -P)" || return 1
    if [ -L "$1" ]; then
      local target
      target="$(readlink "$1")"
      case "$target" in /*) ;; *) target="$dir/$target" ;; esac
      _qv_physical "$target"
    else
      echo "${dir%/}/$(basename "$1")"
    fi
  fi
}

_qv_unsafe() {  # is the container path $1 one the image cannot lose?
  local t="$1" e
  [ "$t" = / ] && return 0
  for e in $_QV_ESSENTIAL; do
    case "$e/" in "$t"/*) return 0 ;; esac
  done
  for e in $_QV_SYSTEM; do
    case "$t/" in "$e"/*) return 0 ;; esac
  done
  return 1
}

# The mounts so far: parallel lists of targets and modes; rw wins over ro.
_QV_TARGETS=()
_QV_SOURCES=()
_QV_MODES=()
_qv_add_mount() {  # HOST_PATH ro|rw
  local target source i
  target="$(_qv_lexical "$1")"
  source="$(_qv_physical "$1")" || return 0
  if _qv_unsafe "$target"; then
    _qv_note "warning: not mounting $target (the image needs that path); use a path elsewhere"
    return 0
  fi
  i=0
  while [ "$i" -lt "${#_QV_TARGETS[@]}" ]; do
    if [ "${_QV_TARGETS[$i]}" = "$target" ]; then
      [ "$2" = rw ] && _QV_MODES[i]=rw
      return 0
    fi
    # Already inside a mounted folder, as the very same host file?
    case "$target/" in
      "${_QV_TARGETS[$i]%/}"/*)
        if [ "$source" = "${_QV_SOURCES[$i]%/}${target#"${_QV_TARGETS[$i]%/}"}" ] \
            && { [ "${_QV_MODES[$i]}" = rw ] || [ "$2" = ro ]; }; then
          return 0
        fi ;;
    esac
    i=$((i + 1))
  done
  _QV_TARGETS+=("$target")
  _QV_SOURCES+=("$source")
  _QV_MODES+=("$2")
}

_qv_is_remote() {
  case "$1" in -|*://*|data:*) return 0 ;; *) return 1 ;; esac
}

_qv_input() {  # a file or folder read by the CLI
  _qv_is_remote "$1" && return 0
  [ -e "$1" ] && _qv_add_mount "$1" ro
  return 0
}

_qv_output() {  # a file written by the CLI: mount its nearest existing folder
  local dir
  [ "$1" = - ] && return 0
  dir="$(dirname "$(_qv_lexical "$1")")"
  _qv_output_dir "$dir"
}

_qv_output_dir() {  # a folder written into: itself, or its nearest existing parent
  local dir
  dir="$(_qv_lexical "$1")"
  while [ ! -d "$dir" ]; do dir="$(dirname "$dir")"; done
  if _qv_unsafe "$dir"; then  # e.g. a new folder at /: make it here, as the user
    mkdir -p "$(_qv_lexical "$1")" 2>/dev/null && dir="$(_qv_lexical "$1")"
  fi
  _qv_add_mount "$dir" rw
}

_qv_model() {
  local dir top rest
  _qv_is_remote "$1" && return 0
  [ -e "$1" ] || return 0
  dir="$(_qv_lexical "$1")"
  # A snapshot in a Hugging Face cache links to ../../blobs: mount the whole repo folder.
  case "$dir" in
    */models--*)
      top="${dir%%/models--*}"
      rest="${dir#"$top"/}"
      _qv_add_mount "$top/${rest%%/*}" ro
      return 0 ;;
  esac
  _qv_add_mount "$1" ro
  return 0
}

_qv_batch_source() {  # $1: a file, folder, glob or URL; $2: 1 inside an @list
  local src="$1" prefix
  _qv_is_remote "$src" && return 0
  case "$src" in
    @-) return 0 ;;  # the list comes on stdin; relative entries resolve in the mounted current folder
    @*)
      [ "$2" = 1 ] && return 0
      src="${src#@}"
      [ -f "$src" ] || return 0
      _qv_add_mount "$src" ro
      local line
      while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line%"${line##*[![:space:]]}"}"
        case "$line" in ''|'#'*) continue ;; esac
        _qv_batch_source "$line" 1
      done <"$src"
      return 0 ;;
    *[\*\?\[]*)
      prefix="${src%%[\*\?\[]*}"
      case "$prefix" in */*) prefix="${prefix%/*}" ;; *) prefix=. ;; esac
      [ -n "$prefix" ] || prefix=/
      [ -d "$prefix" ] && _qv_add_mount "$prefix" ro
      return 0 ;;
  esac
  [ -e "$src" ] && _qv_add_mount "$src" ro
  return 0
}

_qv_value() {  # KIND VALUE
  case "${1%+}" in
    in) _qv_input "$2" ;;
    out) _qv_output "$2" ;;
    outdir) _qv_output_dir "$2" ;;
    model) _qv_model "$2" ;;
    batch) _qv_batch_source "$2" 0 ;;
  esac
  return 0
}

# Walk the arguments and collect the mounts.
_qv_collect_mounts() {
  local arg flag value saw_model=0 KIND
  while [ $# -gt 0 ]; do
    arg="$1"
    shift
    case "$arg" in
      --) for value in "$@"; do [ -e "$value" ] && _qv_add_mount "$value" ro; done; break ;;
      --*=*) flag="${arg%%=*}"; value="${arg#*=}" ;;
      -o?*) flag=-o; value="${arg#-o}" ;;
      *) flag="$arg"; value="" ;;
    esac
    [ "$flag" = --model ] && saw_model=1
    if _qv_flag_kind "$flag"; then
      if [ "$flag" != "$arg" ]; then
        _qv_value "$KIND" "$value"
      elif [ "${KIND%+}" != "$KIND" ]; then  # several values: up to the next option
        while [ $# -gt 0 ]; do
          case "$1" in -?*) break ;; esac
          _qv_value "$KIND" "$1"
          shift
        done
      elif [ $# -gt 0 ]; then
        _qv_value "$KIND" "$1"
        shift
      fi
    elif [ -z "$value" ] && [ "$arg" != - ] && [ -e "$arg" ]; then
      # Any other argument that is an existing path (a flag this script does
      # not know yet): readable in the container.
      _qv_add_mount "$arg" ro
    elif [ -n "$value" ] && [ -e "$value" ]; then
      _qv_add_mount "$value" ro
    fi
  done
  if [ "$saw_model" = 0 ] && [ -n "${QWENVL_MODEL:-}" ]; then
    _qv_model "$QWENVL_MODEL"
  fi
  return 0
}

# Docker's --mount takes comma-separated fields: quote a path CSV-style.
_qv_csv() {
  local v="$1"
  case "$v" in
    *[,\"]*) v="${v//\"/\"\"}"; printf '"%s"' "$v" ;;
    *) printf '%s' "$v" ;;
  esac
}

# Sets GPU_ARGS (the docker run options) and GPU_WHAT (what predict.sh says).
# "on the GPU" only when a GPU will be used: the engine can hand it over, the
# image is a CUDA build, and the host's driver is new enough for its CUDA.
# $1: the image's org.qwenvl.variant label (cpu, cuda13.0, cuda12.6, cuda,
# custom; empty when unknown).
_qv_gpu_args() {
  local want="${QWENVL_GPUS:-auto}" variant="$1" need driver
  GPU_ARGS=()
  case "$want" in
    none|off|cpu|no|0|false)
      GPU_WHAT="on the CPU (QWENVL_GPUS=$want)"
      return 0 ;;
    auto) ;;
    *)
      if [ "$variant" = cpu ]; then  # no CUDA in it: --gpus could only fail
        GPU_WHAT="on the CPU: the image is the CPU-only build, so QWENVL_GPUS=$want is ignored (bash build.sh --cuda)"
      else
        GPU_ARGS=(--gpus "$want")
        GPU_WHAT="with --gpus $want (the CLI says so if it cannot use CUDA)"
      fi
      return 0 ;;
  esac
  qwenvl_gpu_state "$_QV_INFO"
  case "$QWENVL_GPU_STATE" in
    none)
      GPU_WHAT="on the CPU (no NVIDIA runtime in Docker)"
      return 0 ;;
    no-toolkit)
      GPU_WHAT="on the CPU: this host has an NVIDIA GPU but Docker cannot use it (install the NVIDIA container toolkit)"
      return 0 ;;
  esac
  if [ "$variant" = cpu ]; then
    GPU_WHAT="on the CPU: the image is the CPU-only build (bash build.sh --cuda builds the CUDA one)"
    return 0
  fi
  need="$(qwenvl_variant_min_driver "$variant")"
  if ! driver="$(qwenvl_driver_version)"; then
    GPU_ARGS=(--gpus all)
    GPU_WHAT="with --gpus all (the NVIDIA driver version cannot be read here; the CLI says so if it cannot use CUDA)"
  elif [ -n "$need" ] && [ "${driver%%.*}" -lt "$need" ]; then
    GPU_WHAT="on the CPU: NVIDIA driver $driver is older than $need, which this image's ${variant#cuda} CUDA needs (bash build.sh rebuilds it for this driver)"
  elif [ -n "$need" ]; then
    GPU_ARGS=(--gpus all)
    GPU_WHAT="on the GPU (NVIDIA driver $driver; QWENVL_GPUS=none for the CPU)"
  else
    GPU_ARGS=(--gpus all)
    GPU_WHAT="with --gpus all (image of unknown CUDA version, driver $driver; the CLI says so if it cannot use CUDA)"
  fi
}

# Make sure the image exists (build it on first use); warn when it is older
# than the code. Returns non-zero when it cannot be had.
_qv_ensure_image() {
  local image="$1" here="$2" label
  if ! label="$(docker image inspect --format '{{index .Config.Labels "org.qwenvl.source"}}' "$image" 2>/dev/null)"; then
    _qv_note "image $image not found: building it (first use; see build.sh)..."
    QWENVL_IMAGE="$image" bash "$here/build.sh" >/dev/null || return 1
    return 0
  fi
  if [ -n "$label" ] && [ "$label" != "<no value>" ] && [ "$label" != "$(qwenvl_source_hash "$here")" ]; then
    _qv_note "warning: image $image was built from other sources than this checkout: run bash build.sh to update it"
  fi
  return 0
}

# The image's variant label (cpu, cuda13.0, ...), empty when unknown.
_qv_image_variant() {
  local v
  v="$(docker image inspect --format '{{index .Config.Labels "org.qwenvl.variant"}}' "$1" 2>/dev/null)" || return 0
  case "$v" in "<no value>") ;; *) printf '%s' "$v" ;; esac
}

# docker_predict HERE ARGS...: runs the CLI in the container (exec: never returns
# unless the image cannot be had, then returns 3).
docker_predict() {
  local here="$1" image cache user a i
  shift
  image="$(qwenvl_image)"
  _QV_QUIET=0
  for a in "$@"; do case "$a" in -q|--quiet) _QV_QUIET=1 ;; esac; done
  _QV_TARGETS=() _QV_SOURCES=() _QV_MODES=()

  local dry="${QWENVL_DOCKER_DRY_RUN:-0}"
  if [ "$dry" != 1 ]; then
    _qv_ensure_image "$image" "$here" || return 3
  fi

  local run=(docker run --rm)
  if [ -t 0 ] && [ -t 1 ] && [ -t 2 ]; then
    run+=(-it)  # a terminal: progress bars and Ctrl-C behave as without Docker
  elif [ ! -t 0 ]; then
    run+=(-i)  # stdin passes through (--image -)
  fi

  # The calling user, so that outputs belong to them. Rootless Docker maps the
  # container's root to the calling user already.
  # One question to the engine: its runtimes (GPU) and security options (rootless).
  _QV_INFO="$(docker info --format '{{json .Runtimes}} {{json .SecurityOptions}}' 2>/dev/null || true)"
  user="${QWENVL_DOCKER_USER:-}"
  if [ -z "$user" ]; then
    if printf '%s' "$_QV_INFO" | grep -q rootless; then
      user=0:0
    else
      user="$(id -u):$(id -g)"
    fi
  fi
  run+=(--user "$user")

  _qv_gpu_args "$(_qv_image_variant "$image")"
  run+=(${GPU_ARGS[@]+"${GPU_ARGS[@]}"})

  # shellcheck disable=SC2086  # lists of names: split on purpose
  for a in $_QV_ENV_VARS ${QWENVL_DOCKER_ENV:-}; do
    if [ -n "${!a+x}" ]; then run+=(-e "$a"); fi
  done

  cache="${QWENVL_HF_CACHE:-${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}}"
  mkdir -p "$cache" || { echo "predict.sh: cannot create the Hugging Face cache folder $cache" >&2; return 3; }
  cache="$(cd "$cache" && pwd -P)"
  run+=(--mount "type=bind,$(_qv_csv "source=$cache"),target=/cache/huggingface")

  # The current folder, read-write: relative paths and outputs work as on the host.
  local cwd
  cwd="$(_qv_lexical "$PWD")"
  if _qv_unsafe "$cwd"; then
    _qv_note "warning: not mounting the current folder $cwd (the image needs that path): relative paths will not be found"
  else
    _qv_add_mount "$PWD" rw
  fi
  _qv_collect_mounts "$@"
  i=0
  while [ "$i" -lt "${#_QV_TARGETS[@]}" ]; do
    local spec
    spec="type=bind,$(_qv_csv "source=${_QV_SOURCES[$i]}"),$(_qv_csv "target=${_QV_TARGETS[$i]}")"
    [ "${_QV_MODES[$i]}" = ro ] && spec="$spec,readonly"
    run+=(--mount "$spec")
    i=$((i + 1))
  done
  run+=(--workdir "$cwd" "$image" "$@")

  if [ "$dry" = 1 ]; then
    printf '%s\n' "${run[@]}"
    return 0
  fi
  _qv_note "running in Docker (image $image) $GPU_WHAT"
  exec "${run[@]}"
}
