#!/usr/bin/env bash
# Sourced by predict.sh and test.sh: make sure a virtual environment exists
# with the pinned requirements, (re)installing only when a requirements file
# changed. All output goes to stderr, so stdout keeps only results.
#   ensure_venv VENV_DIR REQUIREMENTS_FILE
# Plain bash 3.2 (macOS) compatible.

# shellcheck source=scripts/portable.sh
. "$(dirname "${BASH_SOURCE[0]}")/portable.sh"

ensure_venv() {
  local venv="$1" req="$2" root stamp want have
  root="$(cd "$(dirname "$req")" && pwd)"
  stamp="$venv/.requirements.sha256"
  want="$(cat "$root"/requirements*.txt | qwenvl_sha256)" || return 1
  want="$want $(basename "$req")"
  have="$(cat "$stamp" 2>/dev/null || true)"
  if [ -x "$venv/bin/python" ] && { [ "$have" = "$want" ] || [[ "$have" == "${want%% *} requirements-dev.txt" ]]; }; then
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "setting up a virtual environment in $venv (first run only; several minutes)..." >&2
    python3 -m venv "$venv" >&2 || { echo "error: python3 -m venv failed (install python3-venv)" >&2; return 1; }
  else
    echo "requirements changed: updating $venv..." >&2
  fi
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >&2 \
    || { echo "error: installing $req into $venv failed" >&2; return 1; }
  echo "$want" > "$stamp"
}
