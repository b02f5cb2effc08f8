#!/usr/bin/env bash
# Build a local base image for the container test tier, for hosts that reach
# no image registry: a Debian bookworm root made with debootstrap, plus the
# Python packages already installed in this checkout's virtual environment, so
# that the Dockerfile's `pip install -r requirements.txt` finds everything
# satisfied and downloads nothing. Real users never need this: the Dockerfile
# defaults to a public PyTorch image.
#
#   bash scripts/docker_test_base.sh [VENV]    # prints the image name on stdout
#
# The image is named qwenvl-test-base:<key>, the key a hash of the installed
# package list and of LAYOUT below, and is reused while it exists, so only the
# first run on a machine (or a requirements change) pays for it.
# Environment: QWENVL_DEBIAN_MIRROR (default http://deb.debian.org/debian);
# QWENVL_TEST_FRESH_BASE=1 first removes every qwenvl-test-base image (and the
# images built on them), so that the base is built from nothing, as on a
# machine that never ran the project (.ci/run sets it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${QWENVL_VENV:-$HERE/.venv}}"
MIRROR="${QWENVL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "docker_test_base: $*" >&2; }
# shellcheck source=scripts/portable.sh
. "$HERE/scripts/portable.sh"

[ -x "$VENV/bin/python" ] || { log "no virtual environment at $VENV (run bash test.sh first)"; exit 1; }
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
pyver="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
  log "the venv runs Python $pyver; Debian bookworm has 3.11, so its packages cannot be reused"
  exit 1
fi
# Bump LAYOUT when this script changes what goes into the image.
LAYOUT=1
key="$({ "$VENV/bin/python" -m pip freeze --all 2>/dev/null; echo "layout $LAYOUT"; } | qwenvl_sha256 | cut -c1-16)"
image="qwenvl-test-base:$key"

# Every image whose first layer is that of a base image: the bases and what
# was built on them (a base cannot be removed while an image built on it exists).
remove_base_images() {
  local bases ids id layer base_layers=""
  bases="$(docker images -q --no-trunc qwenvl-test-base | sort -u)"
  [ -n "$bases" ] || return 0
  for id in $bases; do
    base_layers="$base_layers $(docker image inspect --format '{{index .RootFS.Layers 0}}' "$id")"
  done
  ids=""
  for id in $(docker images -aq --no-trunc | sort -u); do
    layer="$(docker image inspect --format '{{index .RootFS.Layers 0}} {{len .RootFS.Layers}}' "$id" 2>/dev/null)" || continue
    case " $base_layers " in *" ${layer% *} "*) ids="$ids${layer#* } $id
" ;; esac
  done
  # The images with the most layers first: children before their parents.
  for id in $(printf '%s' "$ids" | sort -rn | cut -d' ' -f2); do
    docker rmi -f "$id" >/dev/null 2>&1 || true
  done
  if [ -n "$(docker images -q qwenvl-test-base)" ]; then
    log "could not remove every qwenvl-test-base image: $(docker images --format '{{.Repository}}:{{.Tag}}' qwenvl-test-base | tr '\n' ' ')"
    return 1
  fi
  log "removed the earlier base images and the images built on them (QWENVL_TEST_FRESH_BASE=1)"
}
if [ "${QWENVL_TEST_FRESH_BASE:-0}" = 1 ]; then
  remove_base_images
fi
if docker image inspect "$image" >/dev/null 2>&1; then
  log "reusing $image"
  echo "$image"
  exit 0
fi

command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
work="$(mktemp -d "${TMPDIR:-/var/tmp}/qwenvl-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
start=$SECONDS
log "debootstrap bookworm into $root (about a minute)..."
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# A virtual environment at /opt/venv whose site-packages is this venv's:
# hard links when both lie on one file system (instant), else a copy.
dest="$root/opt/venv/lib/python3.11/site-packages"
mkdir -p "$root/opt/venv/bin" "$(dirname "$dest")"
cp -al "$site" "$dest" 2>/dev/null || { rm -rf "$dest"; cp -a "$site" "$dest"; }
ln -s /usr/bin/python3.11 "$root/opt/venv/bin/python"
ln -s python "$root/opt/venv/bin/python3"
ln -s python "$root/opt/venv/bin/python3.11"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' >"$root/opt/venv/pyvenv.cfg"

log "importing $image ($(du -sh "$root" | cut -f1))..."
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
docker run --rm "$image" python3 -c 'import torch, transformers, qwen_vl_utils' \
  || { docker rmi "$image" >/dev/null 2>&1 || true; log "the new base image cannot import torch"; exit 1; }
# Older base images (other requirements) only take room: remove them. There
# are none on a new machine (grep then finds nothing: not a failure).
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' qwenvl-test-base); do
  [ "$old" = "$image" ] || docker rmi "$old" >/dev/null 2>&1 || true
done
log "built $image in $((SECONDS - start)) s"
echo "$image"
