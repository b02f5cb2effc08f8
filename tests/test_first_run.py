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


# --- a PATH made of this machine's tools, some left out, some replaced --------


def toolbox(tmp_path: Path, without: tuple[str, ...] = (), fakes: dict[str, str] | None = None) -> str:
    """A PATH with a link to each command on this PATH except `without`, and
    `fakes` (name -> bash body) in front: a machine that lacks those tools."""
    links, fake_dir = tmp_path / "tools", tmp_path / "fakes"
    links.mkdir(exist_ok=True)
    fake_dir.mkdir(exist_ok=True)
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = os.path.join(folder, name)
            if name in without or (links / name).exists() or not os.access(target, os.X_OK) \
                    or os.path.isdir(target):
                continue
            (links / name).symlink_to(target)
    for name, body in (fakes or {}).items():
        write_tool(fake_dir, name, body)
    return f"{fake_dir}{os.pathsep}{links}"


# --- test.sh installs and starts nothing unless asked -------------------------

PROVISION_FAKES = {
    "id": 'if [ "$1" = -u ]; then echo 0; else exec /usr/bin/id "$@"; fi\n',  # root, as in CI
    "apt-get": 'echo "apt-get $*" >> "$FAKE_LOG"\n',
    "docker": '[ "$1" = info ] && [ -e "$FAKE_LOG.engine" ]\n',  # answers once "dockerd" runs
    "dockerd": 'echo dockerd >> "$FAKE_LOG"; touch "$FAKE_LOG.engine"; exec sleep 60\n',
}
PROVISION_RUN = """
. scripts/test_tools.sh
provision_test_tools
start_docker_engine
echo "started=${QWENVL_STARTED_DOCKERD:-} error=${QWENVL_DOCKER_START_ERROR:-}"
stop_docker_engine
"""


def run_provisioning(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    path = toolbox(tmp_path, without=("shellcheck", "debootstrap", "dockerd", "docker", "apt-get", "id"),
                   fakes=PROVISION_FAKES)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QWENVL_")}
    full_env.update(PATH=path, FAKE_LOG=str(log), **env)
    r = subprocess.run(["bash", "-c", PROVISION_RUN], cwd=ROOT, env=full_env, capture_output=True, text=True,
                       timeout=60)
    return r, calls(log)


def test_test_sh_installs_and_starts_nothing_unless_asked(tmp_path):
    r, log = run_provisioning(tmp_path)
    assert r.returncode == 0, r.stderr
    assert log == []  # no apt-get, no dockerd, even as root
    assert "started= " in r.stdout
    assert "error=no Docker engine is running" in r.stdout
    assert "QWENVL_TEST_PROVISION=1 bash test.sh" in r.stdout  # the command that enables the tier
    assert r.stderr == ""


def test_test_sh_provisions_when_asked(tmp_path):
    r, log = run_provisioning(tmp_path, QWENVL_TEST_PROVISION="1")
    assert r.returncode == 0, r.stderr
    assert log[0] == "apt-get update -q"
    # dockerd (the stand-in) is there: only the two missing tools are installed.
    assert log[1].startswith("apt-get install -y") and log[1].split()[-2:] == ["shellcheck", "debootstrap"]
    assert log[2] == "dockerd"
    assert re.search(r"started=\d+ error=$", r.stdout, re.M), r.stdout
    assert "installing shellcheck debootstrap (" in r.stderr and "starting dockerd" in r.stderr
