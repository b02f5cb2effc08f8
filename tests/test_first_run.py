"""First-run paths of the shell scripts, simulated without the real thing.

Caches hide first-run paths: a machine that ran the project once has the
Docker base image, the venv, pip's cache and the Hugging Face cache. These
tests put stand-ins on PATH (a `docker` with no images, a `debootstrap`, a
`uname` that answers Darwin, an `nvidia-smi` with an old driver) and run the
real scripts against them. The container tier (tests/test_docker.py) runs the
same paths with a real engine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def write_tool(folder: Path, name: str, body: str) -> Path:
    """An executable bash script `name` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# --- the container tier's base image, on a machine that never had one ---------


def fake_docker(folder: Path, log: Path, images: str = "") -> None:
    """A docker command whose engine holds `images` (lines repo:tag) and no more."""
    (folder / "images.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "images.txt").write_text(images)
    write_tool(folder, "docker", f"""
echo "docker $*" >> {log}
case "$1 $2" in
  "image inspect") exit 1 ;;  # no such image
  "images "*) cat {folder / "images.txt"} ;;
  "import "*) cat >/dev/null ;;
esac
exit 0
""")


def fake_debootstrap(folder: Path) -> None:
    write_tool(folder, "debootstrap", """
root="${@: -2:1}"  # debootstrap [OPTIONS] SUITE TARGET MIRROR
mkdir -p "$root/usr/bin" "$root/var/cache/apt/archives" "$root/var/lib/apt/lists"
echo stand-in > "$root/usr/bin/python3"
""")


@pytest.fixture
def small_venv(tmp_path) -> Path:
    """A Python 3.11 virtual environment with nothing in it (copying the real one is slow)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="docker_test_base.sh reuses a Python 3.11 venv")
def test_base_image_is_built_on_a_machine_with_no_images(tmp_path, small_venv):
    # The bug this guards: the last step filtered the (empty) list of older
    # images with grep under `set -o pipefail` and exited 1 with no message.
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.log"
    fake_docker(bin_dir, log)
    fake_debootstrap(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    env.pop("QWENVL_TEST_FRESH_BASE", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "docker_test_base.sh"), str(small_venv)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"qwenvl-test-base:[0-9a-f]{16}\n", r.stdout), r.stdout
    image = r.stdout.strip()
    assert f"built {image}" in r.stderr and "reusing" not in r.stderr
    log_lines = calls(log)
    assert any(line.startswith("docker import ") and line.endswith(image) for line in log_lines), log_lines
    assert not any(line.startswith("docker rmi") for line in log_lines)  # nothing older to remove
    assert not list(tmp_path.glob("qwenvl-base.*"))  # its work folder is gone


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="docker_test_base.sh reuses a Python 3.11 venv")
def test_base_image_build_removes_only_older_bases(tmp_path, small_venv):
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.log"
    fake_docker(bin_dir, log, images="qwenvl-test-base:0123456789abcdef\n")
    fake_debootstrap(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    env.pop("QWENVL_TEST_FRESH_BASE", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "docker_test_base.sh"), str(small_venv)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rmis = [line for line in calls(log) if line.startswith("docker rmi")]
    assert rmis == ["docker rmi qwenvl-test-base:0123456789abcdef"]
