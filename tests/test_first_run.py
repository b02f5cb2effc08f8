"""First-run paths of the shell scripts, simulated without the real thing.

Caches hide first-run paths: a machine that ran the project once has the
Docker base image, the venv, pip's cache and the Hugging Face cache. These
tests put stand-ins on PATH (a `docker` with no images, a `debootstrap`, a
`uname` that answers Darwin, an `nvidia-smi` with an old driver) and run the
real scripts against them. The container tier (tests/test_docker.py) runs the
same paths with a real engine.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
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


def run_base_script(tmp_path: Path, venv, images: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    """scripts/docker_test_base.sh against a stand-in docker (holding `images`) and debootstrap."""
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.log"
    fake_docker(bin_dir, log, images=images)
    fake_debootstrap(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    env.pop("QWENVL_TEST_FRESH_BASE", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "docker_test_base.sh"), str(venv)],
                       capture_output=True, text=True, env=env, timeout=120)
    return r, log


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="docker_test_base.sh reuses a Python 3.11 venv")
def test_base_image_is_built_on_a_machine_with_no_images(tmp_path, small_venv):
    # The bug this guards: the last step filtered the (empty) list of older
    # images with grep under `set -o pipefail` and exited 1 with no message.
    r, log = run_base_script(tmp_path, small_venv)
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
    r, log = run_base_script(tmp_path, small_venv, images="qwenvl-test-base:0123456789abcdef\n")
    assert r.returncode == 0, r.stderr
    rmis = [line for line in calls(log) if line.startswith("docker rmi")]
    assert rmis == ["docker rmi qwenvl-test-base:0123456789abcdef"]


# --- a PATH made of this machine's tools, some left out, some replaced --------


def toolbox(tmp_path: Path, without: tuple[str, ...] = (), fakes: dict[str, str] | None = None) -> str:
    """A PATH with a link to each command on this PATH except `without`, and
    `fakes` (name -> bash body) in front: a machine that lacks those tools."""
    links, fake_dir = tmp_path / "tools", tmp_path / "fakes"
    links.mkdir(parents=True, exist_ok=True)
    fake_dir.mkdir(parents=True, exist_ok=True)
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


# --- macOS, simulated: `uname` answers Darwin, no sha256sum -------------------

MAC_FAKES = {
    "uname": 'case "${1:-}" in -m) echo arm64 ;; -r) echo 24.1.0 ;; *) echo Darwin ;; esac\n',
}
if not shutil.which("shasum"):  # macOS has it; Linux has it with perl. Else a stand-in with its output format.
    MAC_FAKES["shasum"] = (f'[ "$1 $2" = "-a 256" ] || exit 2\n'
                           f'{sys.executable} -c "import hashlib,sys; '
                           f'print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest() + \'  -\')"\n')


def mac_path(tmp_path: Path, fakes: dict[str, str] | None = None) -> str:
    return toolbox(tmp_path, without=("sha256sum", "uname", *(fakes or {})), fakes={**MAC_FAKES, **(fakes or {})})


def requirements_hash() -> str:
    data = b"".join(p.read_bytes() for p in sorted(ROOT.glob("requirements*.txt")))
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def stand_in_venv(tmp_path) -> tuple[Path, Path]:
    """A venv whose python is this one, and which logs and refuses `-m pip` (never touch the real venv)."""
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    write_tool(venv / "bin", "python", f"""
if [ "$1 $2" = "-m pip" ]; then echo "pip $*" >> {log}; exit 0; fi
exec {sys.executable} "$@"
""")
    return venv, log


def test_mac_toolbox_really_lacks_sha256sum(tmp_path):
    path = mac_path(tmp_path)
    assert shutil.which("sha256sum", path=path) is None
    r = subprocess.run(["uname", "-s"], env={**os.environ, "PATH": path}, capture_output=True, text=True)
    assert r.stdout == "Darwin\n"


def test_venv_hash_on_macos_tools_and_reinstall_on_change(tmp_path, stand_in_venv):
    venv, pip_log = stand_in_venv
    (venv / ".requirements.sha256").write_text("0" * 64 + " requirements.txt\n")  # made from other requirements
    env = {**os.environ, "PATH": mac_path(tmp_path)}
    script = f'. scripts/venv.sh && ensure_venv {venv} {ROOT / "requirements.txt"}'
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "requirements changed" in r.stderr
    assert len(calls(pip_log)) == 1 and calls(pip_log)[0].endswith(f"-r {ROOT / 'requirements.txt'}")
    assert (venv / ".requirements.sha256").read_text() == f"{requirements_hash()} requirements.txt\n"
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""  # unchanged: nothing to do
    assert len(calls(pip_log)) == 1


def test_image_source_hash_is_the_same_with_macos_tools(tmp_path):
    script = f'. scripts/docker_lib.sh && qwenvl_source_hash {ROOT}'
    linux = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
    mac = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PATH": mac_path(tmp_path)})
    assert linux.returncode == 0 and mac.returncode == 0, mac.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", linux.stdout)
    assert mac.stdout == linux.stdout


def test_predict_sh_auto_on_macos_prefers_the_local_environment(tmp_path, stand_in_venv):
    venv, pip_log = stand_in_venv
    (venv / ".requirements.sha256").write_text(f"{requirements_hash()} requirements.txt\n")
    docker_log = tmp_path / "docker.log"
    path = mac_path(tmp_path, fakes={"docker": f'echo "docker $*" >> {docker_log}; exit 0\n'})  # Docker Desktop answers
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWENVL_")}
    env.update(PATH=path, QWENVL_VENV=str(venv))
    r = subprocess.run(["bash", str(ROOT / "predict.sh"), "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("predict.py ")
    assert r.stderr.splitlines() == [
        "predict.sh: macOS: running in the local virtual environment, not Docker "
        "(containers cannot use the Apple GPU; QWENVL_MODE=docker forces Docker)"]
    assert calls(docker_log) == []  # Docker was not even asked
    assert calls(pip_log) == []  # the hash matched without sha256sum: no reinstall
    # Asked for explicitly, Docker is still used on macOS.
    r = subprocess.run(["bash", str(ROOT / "predict.sh"), "--docker", "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "macOS: running in the local virtual environment" not in r.stderr
    assert any(line.startswith("docker info") for line in calls(docker_log))
    # --quiet: not even the macOS line.
    r = subprocess.run(["bash", str(ROOT / "predict.sh"), "--version", "--quiet"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""


# --- GPUs and drivers: build.sh's base image, predict.sh's GPU line -----------


def nvidia_smi(driver: str) -> str:
    """An nvidia-smi that knows one GPU with `driver`, and answers only what the scripts ask."""
    return f"""
case "$*" in
  -L) echo "GPU 0: Tesla T4 (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
  "--query-gpu=driver_version --format=csv,noheader") echo "{driver}" ;;
  *) echo "unexpected arguments: $*" >&2; exit 9 ;;
esac
"""


def build_dry(tmp_path, *args, fakes=None, without=()) -> subprocess.CompletedProcess:
    """build.sh's docker build command (QWENVL_DOCKER_DRY_RUN=1), with no engine to ask."""
    path = toolbox(tmp_path, without=("nvidia-smi", "nvidia-ctk", "nvidia-container-cli", *without,
                                      *(fakes or {})), fakes=fakes)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWENVL_", "BASE_IMAGE"))}
    env.update(PATH=path, QWENVL_DOCKER_DRY_RUN="1", DOCKER_HOST="unix:///nonexistent/docker.sock")
    return subprocess.run(["bash", str(ROOT / "build.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def build_args(r: subprocess.CompletedProcess) -> dict:
    words = r.stdout.splitlines()
    assert words[:2] == ["docker", "build"] and words[-1] == str(ROOT), words
    pairs = [words[i + 1] for i, w in enumerate(words) if w in ("--build-arg", "--label")]
    return dict(p.split("=", 1) for p in pairs)


GPU_HOST = {"nvidia-ctk": "exit 0\n"}  # the NVIDIA container toolkit is installed


def test_build_picks_cuda_12_6_for_a_driver_older_than_580(tmp_path):
    r = build_dry(tmp_path, fakes={**GPU_HOST, "nvidia-smi": nvidia_smi("535.183.01")})
    assert r.returncode == 0, r.stderr
    a = build_args(r)
    assert a["BASE_IMAGE"] == "pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime"
    assert a["org.qwenvl.variant"] == "cuda12.6" and "TORCH_INDEX_URL" not in a
    assert ("build.sh: NVIDIA driver 535.183.01 is older than 580 (needed by CUDA 13.0): using the CUDA 12.6 "
            "base image pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime") in r.stderr.splitlines()


def test_build_keeps_cuda_13_0_for_driver_580_and_newer(tmp_path):
    for driver in ("580.65.06", "590.10"):
        r = build_dry(tmp_path / driver, fakes={**GPU_HOST, "nvidia-smi": nvidia_smi(driver)})
        assert r.returncode == 0, r.stderr
        a = build_args(r)
        assert a["BASE_IMAGE"] == "pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime"
        assert a["org.qwenvl.variant"] == "cuda13.0" and "older" not in r.stderr


def test_build_warns_when_even_cuda_12_6_is_too_new_for_the_driver(tmp_path):
    r = build_dry(tmp_path, "--cuda", fakes={**GPU_HOST, "nvidia-smi": nvidia_smi("470.256.02")})
    assert r.returncode == 0 and build_args(r)["org.qwenvl.variant"] == "cuda12.6"
    assert "older than 525 too: containers will run on the CPU" in r.stderr


def test_build_auto_makes_the_cpu_image_for_a_driver_no_cuda_build_runs_on(tmp_path):
    r = build_dry(tmp_path, fakes={**GPU_HOST, "nvidia-smi": nvidia_smi("470.256.02")})
    assert r.returncode == 0, r.stderr
    a = build_args(r)
    assert a["org.qwenvl.variant"] == "cpu" and "TORCH_INDEX_URL" in a
    assert ("build.sh: NVIDIA driver 470.256.02 is older than 525 (needed by CUDA 12.6): building the CPU-only "
            "image (update the driver for the GPU; --cuda builds the CUDA one anyway)") in r.stderr.splitlines()


def test_the_default_cuda_base_is_the_dockerfiles(tmp_path):
    first = next(ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("ARG BASE_IMAGE="))
    r = build_dry(tmp_path, "--cuda")  # no driver on this host
    assert build_args(r)["BASE_IMAGE"] == first.split("=", 1)[1]
    assert "no NVIDIA driver found here" in r.stderr


def test_build_auto_makes_the_cpu_image_without_an_nvidia_runtime(tmp_path):
    r = build_dry(tmp_path)
    assert r.returncode == 0, r.stderr
    a = build_args(r)
    assert a["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert a["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert a["org.qwenvl.variant"] == "cpu"
    assert r.stderr.splitlines() == [
        "build.sh: no NVIDIA GPU runtime on this host: building the CPU-only image (--cuda builds the CUDA one)"]
    # A GPU without the container toolkit: containers cannot use it either.
    r = build_dry(tmp_path / "gpu", fakes={"nvidia-smi": nvidia_smi("580.65.06")})
    assert build_args(r)["org.qwenvl.variant"] == "cpu" and "no NVIDIA container toolkit" in r.stderr


def test_build_cpu_and_custom_bases_are_explicit(tmp_path):
    r = build_dry(tmp_path, "--cpu", "--torch-index", "https://mirror.example/torch-cpu",
                  fakes={**GPU_HOST, "nvidia-smi": nvidia_smi("580.65.06")})
    a = build_args(r)
    assert a["org.qwenvl.variant"] == "cpu" and a["TORCH_INDEX_URL"] == "https://mirror.example/torch-cpu"
    assert r.stderr == ""
    r = build_dry(tmp_path / "custom", "--base-image", "my/torch:1")
    a = build_args(r)
    assert a["BASE_IMAGE"] == "my/torch:1" and a["org.qwenvl.variant"] == "custom" and "TORCH_INDEX_URL" not in a
    r = build_dry(tmp_path / "bad", "--gpu-please")
    assert r.returncode == 2 and r.stderr.splitlines() == ["build.sh: unknown option: --gpu-please (bash build.sh --help)"]


def test_build_dry_run_with_macos_tools(tmp_path):
    r = build_dry(tmp_path, "--cpu", fakes=MAC_FAKES, without=("sha256sum",))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"[0-9a-f]{16}", build_args(r)["org.qwenvl.source"])


def predict_in_fake_docker(tmp_path, variant: str, runtimes: str, fakes: dict[str, str] | None = None,
                           **env) -> tuple[str, list[str]]:
    """predict.sh in Docker mode against a docker stand-in: (its last stderr line, the `docker run` words)."""
    log = tmp_path / "docker.log"
    docker = f"""
case "$1" in
  info) echo '{runtimes} ["name=seccomp"]' ;;
  image) case "$*" in *org.qwenvl.variant*) echo "{variant}" ;; *) echo "<no value>" ;; esac ;;
  run) printf '%s\\n' "$@" > {log} ;;
esac
"""
    path = toolbox(tmp_path, without=("nvidia-smi", "nvidia-ctk", "nvidia-container-cli", "docker",
                                      *(fakes or {})), fakes={"docker": docker, **(fakes or {})})
    full = {k: v for k, v in os.environ.items() if not k.startswith("QWENVL_")}
    full.update(PATH=path, QWENVL_MODE="docker", QWENVL_HF_CACHE=str(tmp_path / "hf"), **env)
    r = subprocess.run(["bash", str(ROOT / "predict.sh"), "--version"], cwd=tmp_path, env=full,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stderr.splitlines()[-1], calls(log)


NVIDIA_RUNTIME = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'
NO_RUNTIME = '{"runc":{"path":"runc"}}'


@pytest.mark.parametrize("case", [
    # (image variant, engine runtimes, host driver or None, --gpus expected, the line predict.sh says)
    ("cuda13.0", NVIDIA_RUNTIME, "580.65.06", True, "on the GPU (NVIDIA driver 580.65.06; QWENVL_GPUS=none for the CPU)"),
    ("cuda13.0", NVIDIA_RUNTIME, "535.183.01", False,
     "on the CPU: NVIDIA driver 535.183.01 is older than 580, which this image's 13.0 CUDA needs"),
    ("cuda12.6", NVIDIA_RUNTIME, "535.183.01", True, "on the GPU (NVIDIA driver 535.183.01;"),
    ("cpu", NVIDIA_RUNTIME, "580.65.06", False, "on the CPU: the image is the CPU-only build"),
    ("cuda13.0", NVIDIA_RUNTIME, None, True, "with --gpus all (the NVIDIA driver version cannot be read here"),
    ("cuda13.0", NO_RUNTIME, None, False, "on the CPU (no NVIDIA runtime in Docker)"),
    ("cuda13.0", NO_RUNTIME, "580.65.06", False, "on the CPU: this host has an NVIDIA GPU but Docker cannot use it"),
], ids=["new-driver", "old-driver", "cuda12.6-image", "cpu-image", "driver-unknown", "no-runtime", "no-toolkit"])
def test_predict_sh_says_on_the_gpu_only_when_one_is_used(tmp_path, case):
    variant, runtimes, driver, gpus, said = case
    fakes = {"nvidia-smi": nvidia_smi(driver)} if driver else {}
    line, run = predict_in_fake_docker(tmp_path, variant, runtimes, fakes)
    assert line.startswith(f"predict.sh: running in Docker (image qwenvl:latest) {said}"), line
    assert ("--gpus" in run) == gpus and run[0] == "run", run
    assert ("on the GPU" in line) == (gpus and driver is not None and variant != "cpu")


def test_predict_sh_never_passes_gpus_to_the_cpu_image(tmp_path):
    line, run = predict_in_fake_docker(tmp_path, "cpu", NVIDIA_RUNTIME, {"nvidia-smi": nvidia_smi("580.65.06")},
                                       QWENVL_GPUS="all")
    assert "--gpus" not in run
    assert line == ("predict.sh: running in Docker (image qwenvl:latest) on the CPU: the image is the CPU-only "
                    "build, so QWENVL_GPUS=all is ignored (bash build.sh --cuda)")


# --- a machine with no virtual environment, no Hugging Face cache -------------


def test_venv_is_made_on_first_use(tmp_path):
    # python3 -m venv stands in (the real one takes minutes with the pinned
    # torch); the script's part is what it runs and records.
    log, venv = tmp_path / "calls.log", tmp_path / "new-venv"
    python3 = f"""
echo "python3 $*" >> {log}
[ "$1 $2" = "-m venv" ] || exit 3
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\\necho "venv-python $*" >> {log}\\n' > "$3/bin/python"
chmod +x "$3/bin/python"
"""
    env = {**os.environ, "PATH": toolbox(tmp_path, without=("python3",), fakes={"python3": python3})}
    script = f'. scripts/venv.sh && ensure_venv {venv} {ROOT / "requirements.txt"}'
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # progress on stderr only: predict.sh's stdout is results
    assert f"setting up a virtual environment in {venv} (first run only" in r.stderr
    assert calls(log) == [f"python3 -m venv {venv}",
                          f"venv-python -m pip install --disable-pip-version-check -q -r {ROOT / 'requirements.txt'}"]
    assert (venv / ".requirements.sha256").read_text() == f"{requirements_hash()} requirements.txt\n"


def test_predict_sh_makes_a_missing_hugging_face_cache_folder(tmp_path):
    # A new user has no ~/.cache/huggingface: predict.sh creates it (as the
    # user, so the container's writes belong to them) and mounts it.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWENVL_", "HF_", "XDG_"))}
    env.update(HOME=str(home), QWENVL_MODE="docker", QWENVL_DOCKER_DRY_RUN="1")
    r = subprocess.run(["bash", str(ROOT / "predict.sh"), "--image", "x.jpg"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cache = home / ".cache" / "huggingface"
    assert cache.is_dir() and cache.stat().st_uid == os.getuid()
    words = r.stdout.splitlines()
    assert f"type=bind,source={cache},target=/cache/huggingface" in words
