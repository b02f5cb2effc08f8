"""The container path: predict.sh in Docker mode, build.sh and the Dockerfile.

Two tiers:
- without Docker: predict.sh's dry run (QWENVL_DOCKER_DRY_RUN=1 prints the
  `docker run` command) shows which host paths are mounted and how, and the
  mode choice falls back to the virtual environment when no engine answers;
- with Docker (marker `docker`): a base image is made locally (no registry is
  reachable here: debootstrap + this venv's packages, see
  scripts/docker_test_base.sh), the project's image is built on it with
  build.sh and this machine's CA bundle, and predict.sh runs the tiny
  checkpoint in a container. Skipped, with the reason, when no engine answers.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREDICT = str(ROOT / "predict.sh")
VENV = sys.prefix if sys.prefix != sys.base_prefix else ""  # the venv the tests run in
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TEST_IMAGE = "qwenvl-test:latest"


def _env(**extra) -> dict:
    env = dict(os.environ)
    for name in ("QWENVL_MODE", "QWENVL_IMAGE", "QWENVL_GPUS", "QWENVL_DOCKER_USER", "QWENVL_MODEL",
                 "QWENVL_DOCKER_DRY_RUN", "QWENVL_HF_CACHE", "BASE_IMAGE", "QWENVL_CA_BUNDLE",
                 "QWENVL_INT8_CACHE"):
        env.pop(name, None)
    if VENV:
        env["QWENVL_VENV"] = VENV
    env.update({k: str(v) for k, v in extra.items()})
    return env


def predict_sh(*args, cwd=None, stdin: bytes | None = None, timeout=600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", PREDICT, *map(str, args)], cwd=cwd, env=_env(**env), input=stdin or b"",
                          capture_output=True, timeout=timeout)


def dry_run(*args, cwd=None, **env) -> list[str]:
    r = predict_sh(*args, cwd=cwd, QWENVL_MODE="docker", QWENVL_DOCKER_DRY_RUN=1, **env)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().splitlines()


def mounts(words: list[str]) -> dict:
    """target -> (source, 'ro' | 'rw') from the --mount options of a dry run."""
    import csv

    found = {}
    for flag, value in zip(words, words[1:]):
        if flag != "--mount":
            continue
        fields = next(csv.reader([value]))
        kv = dict(f.split("=", 1) if "=" in f else (f, "") for f in fields)
        assert kv["type"] == "bind"
        found[kv["target"]] = (kv["source"], "ro" if "readonly" in kv else "rw")
    return found


# --- predict.sh without a Docker engine ---------------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """Files in folders outside the project and outside the current folder."""
    (tmp_path / "in").mkdir()
    (tmp_path / "cwd").mkdir()
    for name in ("a.jpg", "b.jpg", "c,d.jpg", "schema.json"):
        (tmp_path / "in" / name).write_bytes(b"x")
    return tmp_path


def test_dry_run_mounts_inputs_read_only_and_output_folders_read_write(outside):
    inp, cwd = outside / "in", outside / "cwd"
    words = dry_run("--image", inp / "a.jpg", "--images", inp / "b.jpg", inp / "c,d.jpg",
                    "--schema", inp / "schema.json", "--output", outside / "new" / "deep" / "r.json",
                    "--model", "Qwen/Qwen3-VL-2B-Instruct", cwd=cwd)
    m = mounts(words)
    assert m[str(inp / "a.jpg")] == (str(inp / "a.jpg"), "ro")
    assert m[str(inp / "b.jpg")] == (str(inp / "b.jpg"), "ro")
    assert m[str(inp / "c,d.jpg")] == (str(inp / "c,d.jpg"), "ro")  # a comma survives the CSV syntax
    assert m[str(inp / "schema.json")][1] == "ro"
    # The output's nearest existing folder, read-write (the CLI creates new/deep).
    assert m[str(outside)] == (str(outside), "rw")
    # The current folder is mounted and is the working folder; the cache is shared.
    assert m[str(cwd)] == (str(cwd), "rw")
    assert words[words.index("--workdir") + 1] == str(cwd)
    assert "/cache/huggingface" in m
    # The arguments reach the CLI unchanged, after the image name.
    image_at = words.index("qwenvl:latest")
    assert words[image_at + 1:image_at + 3] == ["--image", str(inp / "a.jpg")]
    assert words[-2:] == ["--model", "Qwen/Qwen3-VL-2B-Instruct"]
    assert words[words.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def test_dry_run_relative_paths_equals_forms_and_missing_files(outside):
    cwd = outside / "cwd"
    (cwd / "here.jpg").write_bytes(b"x")
    words = dry_run("--image", "here.jpg", "--image=../in/a.jpg", "-o../out.txt", "--video",
                    outside / "missing.mp4", "--history", "chat.json", "--image", "https://example.com/x.jpg",
                    "--image", "-", cwd=cwd)
    m = mounts(words)
    assert m[str(outside / "in" / "a.jpg")][1] == "ro"  # resolved against the current folder
    assert m[str(outside)][1] == "rw"  # -o../out.txt goes to the parent folder
    assert str(outside / "missing.mp4") not in m  # the CLI reports it, exit 1
    assert str(cwd / "here.jpg") not in m  # inside the mounted current folder already
    assert not any("example.com" in t for t in m)
    assert "-i" in words[:words.index("--user")]  # stdin passes through


def test_dry_run_batch_sources(outside):
    inp, cwd = outside / "in", outside / "cwd"
    (outside / "scans" / "2024").mkdir(parents=True)
    (outside / "listed").mkdir()
    (outside / "listed" / "p.jpg").write_bytes(b"x")
    lst = outside / "list.txt"
    lst.write_text(f"# a comment\n{outside / 'listed' / 'p.jpg'}\n\n  {inp}  \r\n")
    words = dry_run("--batch", f"@{lst}", str(outside / "scans") + "/*/*.jpg", "@-",
                    "--output-dir", outside / "results", cwd=cwd)
    m = mounts(words)
    assert m[str(lst)][1] == "ro"
    assert m[str(outside / "listed" / "p.jpg")][1] == "ro"  # what the list names
    assert m[str(inp)][1] == "ro"
    assert m[str(outside / "scans")][1] == "ro"  # a glob's fixed leading folder
    assert m[str(outside)][1] == "rw"  # --output-dir: nearest existing folder


def test_dry_run_hub_snapshot_mounts_its_repo_folder(tmp_path):
    repo = tmp_path / "hub" / "models--Qwen--Qwen3-VL-2B-Instruct"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (tmp_path / "cwd").mkdir()
    m = mounts(dry_run("--image", "x.jpg", "--model", snap, cwd=tmp_path / "cwd"))
    assert m[str(repo)][1] == "ro"  # the snapshot's links to ../../blobs resolve


def test_dry_run_model_from_environment(tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    (tmp_path / "cwd").mkdir()
    words = dry_run("--image", "x.jpg", cwd=tmp_path / "cwd", QWENVL_MODEL=model)
    assert mounts(words)[str(model)][1] == "ro"
    assert words[words.index("QWENVL_MODEL") - 1] == "-e"


def test_dry_run_passes_the_int8_cache_setting(tmp_path):
    words = dry_run("--image", "x.jpg", "--quantize", "int8", cwd=tmp_path, QWENVL_INT8_CACHE="0")
    assert words[words.index("QWENVL_INT8_CACHE") - 1] == "-e"
    assert "QWENVL_INT8_CACHE" not in dry_run("--image", "x.jpg", cwd=tmp_path)


def test_dry_run_never_mounts_over_the_image(tmp_path):
    r = predict_sh("--image", "/etc/hostname", "--image", "/usr/bin/env", cwd=tmp_path,
                   QWENVL_MODE="docker", QWENVL_DOCKER_DRY_RUN=1)
    assert r.returncode == 0
    targets = mounts(r.stdout.decode().splitlines())
    assert "/etc/hostname" not in targets and "/usr/bin/env" not in targets
    assert "not mounting /etc/hostname" in r.stderr.decode()


def test_dry_run_gpu_choice_user_and_environment(tmp_path):
    def words(**env):
        return dry_run("--image", "x.jpg", cwd=tmp_path, **env)

    assert "--gpus" not in words(QWENVL_GPUS="none")
    w = words(QWENVL_GPUS="all")
    assert w[w.index("--gpus") + 1] == "all"
    w = words(QWENVL_GPUS="device=1")
    assert w[w.index("--gpus") + 1] == "device=1"
    # auto without an engine that has the NVIDIA runtime: the CPU.
    r = predict_sh("--image", "x.jpg", cwd=tmp_path, QWENVL_MODE="docker", QWENVL_DOCKER_DRY_RUN=1,
                   DOCKER_HOST="unix:///nonexistent/docker.sock", PATH=_path_without_nvidia())
    assert "--gpus" not in r.stdout.decode().splitlines()
    w = words(QWENVL_DOCKER_USER="1234:5678", HF_TOKEN="hf_x", HF_HUB_OFFLINE="1")
    assert w[w.index("--user") + 1] == "1234:5678"
    assert "HF_TOKEN" in w and "HF_HUB_OFFLINE" in w and "hf_x" not in w  # by name: no secret on the command line
    env_names = [w[i + 1] for i, x in enumerate(w) if x == "-e"]
    assert "HF_ENDPOINT" not in env_names  # unset: not passed


def _path_without_nvidia() -> str:
    return ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists())


def test_falls_back_to_the_venv_without_docker(tmp_path):
    r = predict_sh("--version", cwd=tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("predict.py ")  # stdout: the CLI's only
    assert "Docker is not available" in r.stderr.decode() and "virtual environment" in r.stderr.decode()
    quiet = predict_sh("--version", "--quiet", cwd=tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert quiet.stderr == b""


def test_modes_forced(tmp_path):
    r = predict_sh("--task", "vqa", "--image", "a.jpg", cwd=tmp_path, QWENVL_MODE="venv")
    assert r.returncode == 2 and r.stdout == b""  # the CLI's usage error, its exit code
    assert r.stderr.decode().strip().splitlines()[-1].startswith("error: --task vqa needs a question")
    r = predict_sh("--venv", "--version", cwd=tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 0 and b"Docker" not in r.stderr
    r = predict_sh("--version", cwd=tmp_path, QWENVL_MODE="docker", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert r.returncode == 1 and "QWENVL_MODE=docker" in r.stderr.decode()
    r = predict_sh("--version", cwd=tmp_path, QWENVL_MODE="podman")
    assert r.returncode == 2 and "must be auto, docker or venv" in r.stderr.decode()


def test_dockerfile_installs_dependencies_before_the_code():
    lines = [ln.split(None, 1) for ln in (ROOT / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith((" ", "#"))]
    order = [(ins, rest.split()[0] if rest.split() else "") for ins, rest in lines]
    pip_at = next(i for i, (ins, _) in enumerate(lines) if ins == "RUN" and "pip install" in _)
    code_at = [i for i, (ins, arg) in enumerate(order) if ins == "COPY" and arg in ("predict.py", "qwenvl/")]
    assert code_at and pip_at < min(code_at)
    assert lines[0][0] == "ARG" and lines[0][1].startswith("BASE_IMAGE=")
    text = (ROOT / "Dockerfile").read_text()
    assert "USER app" in text and 'ENTRYPOINT ["python3", "/opt/qwenvl/app/predict.py"]' in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[ln.strip().startswith("#") for ln in ignore].index(False)] == "*"  # allow-list: no .venv


# --- the container tier -------------------------------------------------------


ENABLE = "QWENVL_TEST_PROVISION=1 bash test.sh"  # the one command that enables the container tier (as root)


def no_engine_reason() -> str | None:
    """Why the container tier cannot run here, with the command that enables it; None when it can."""
    if not shutil.which("docker"):
        why = "the docker command is not installed"
    else:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
        if r.returncode == 0:
            return None
        why = (r.stderr.strip().splitlines() or ["docker info failed"])[-1]
    why = os.environ.get("QWENVL_DOCKER_START_ERROR") or why
    if ENABLE not in why:
        why += f"; to run it: {ENABLE} (as root: installs docker.io and debootstrap, starts dockerd)"
    return f"container tier: no Docker engine ({why})"


@pytest.fixture(scope="module")
def engine():
    reason = no_engine_reason()
    if reason:
        pytest.skip(reason)
    return _docker("info", "--format", "{{.ServerVersion}}").stdout.strip()


@pytest.fixture(scope="module")
def base_image(engine) -> str:
    if os.environ.get("QWENVL_TEST_BASE_IMAGE"):  # e.g. the public PyTorch image, where a registry answers
        return os.environ["QWENVL_TEST_BASE_IMAGE"]
    if not VENV:
        pytest.skip("container tier: the tests must run from a virtual environment (bash test.sh)")
    if os.getuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip("container tier: the local base image needs root and debootstrap "
                    f"(as root: {ENABLE}; or set QWENVL_TEST_BASE_IMAGE to an image with the pinned torch)")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "docker_test_base.sh"), VENV],
                       capture_output=True, text=True, timeout=1800)
    BASE_LOG.append(r.stderr)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


BASE_LOG: list[str] = []  # what docker_test_base.sh said when the fixture ran it


def _build(*extra: str, tag: str = TEST_IMAGE, base: str) -> float:
    start = time.monotonic()
    args = ["bash", str(ROOT / "build.sh"), "--tag", tag, "--base-image", base, *extra]
    if Path(CA_BUNDLE).is_file():
        args += ["--ca-bundle", CA_BUNDLE]
    r = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip() == tag
    return time.monotonic() - start


@pytest.fixture(scope="module")
def image(base_image) -> str:
    _build(base=base_image)
    return TEST_IMAGE


@pytest.fixture
def in_docker(image, tmp_path):
    """predict.sh in container mode on the test image, with its own HF cache."""

    def run(*args, cwd=None, stdin=None, **env):
        env = {"QWENVL_MODE": "docker", "QWENVL_IMAGE": image, "QWENVL_HF_CACHE": tmp_path / "hf-cache",
               "HF_HUB_OFFLINE": "1", **env}
        return predict_sh(*args, cwd=cwd or tmp_path, stdin=stdin, **env)

    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Media outside the project folder."""
    import media_factory

    folder = tmp_path_factory.mktemp("docker-media")
    return {"jpeg": media_factory.jpeg(folder / "photo.jpg"), "pdf": media_factory.pdf(folder / "doc.pdf")}


def _docker(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.docker
def test_base_image_built_from_nothing_when_asked(base_image):
    # .ci/run sets QWENVL_TEST_FRESH_BASE=1: the base must then have been made
    # here, now, as on a machine that never ran the project; not reused.
    if os.environ.get("QWENVL_TEST_FRESH_BASE") != "1" or not BASE_LOG:
        pytest.skip("fresh-machine check: only with QWENVL_TEST_FRESH_BASE=1 and the local base "
                    "(QWENVL_TEST_PROVISION=1 QWENVL_TEST_FRESH_BASE=1 bash test.sh, as .ci/run does)")
    log = BASE_LOG[0]
    assert f"built {base_image} in " in log and "reusing" not in log, log
    left = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", "qwenvl-test-base").stdout.split()
    assert left == [base_image]


@pytest.mark.docker
def test_image_runs_on_its_own_as_a_non_root_user(image):
    r = _docker("run", "--rm", image, "--help")
    assert r.returncode == 0 and "--max-new-tokens" in r.stdout
    r = _docker("run", "--rm", "--entrypoint", "id", image, "-u")
    assert r.returncode == 0 and r.stdout.strip() != "0"
    config = json.loads(_docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "app"
    assert "/cache/huggingface" in (config.get("Volumes") or {})
    assert "HF_HOME=/cache/huggingface" in config["Env"]


@pytest.mark.docker
def test_caption_of_an_image_outside_the_project(in_docker, tiny_model, files, tmp_path):
    args = ["--image", files["jpeg"], "--model", tiny_model, "--max-new-tokens", "8"]
    r = in_docker(*args)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    err = r.stderr.decode()
    assert "running in Docker" in err and ("on the CPU" in err or "on the GPU" in err)
    # Same code, same packages, greedy decoding: the same answer as without Docker.
    host = subprocess.run([sys.executable, str(ROOT / "predict.py"), *map(str, args)], capture_output=True,
                          cwd=tmp_path, env=_env(HF_HUB_OFFLINE="1"))
    assert host.returncode == 0, host.stderr.decode()[-2000:]
    assert r.stdout == host.stdout and r.stdout.strip()


@pytest.mark.docker
def test_pdf(in_docker, tiny_model, files):
    r = in_docker("--image", files["pdf"], "--task", "ocr", "--model", tiny_model, "--max-new-tokens", "4",
                  "--dpi", "72")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    markers = [ln for ln in r.stdout.decode().splitlines() if ln.startswith("--- page ")]
    assert markers == [f"--- page {n} of {files['pdf']} ---" for n in (1, 2, 3)]


@pytest.mark.docker
def test_json_output_outside_the_project_belongs_to_the_caller(in_docker, tiny_model, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("docker-out") / "new" / "deeper" / "result.json"
    r = in_docker("--image", files["jpeg"], "--model", tiny_model, "--max-new-tokens", "8", "--output", out)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert r.stdout == b""  # the result went to the file
    assert json.loads(out.read_text(encoding="utf-8"))["text"]
    assert sorted(os.listdir(out.parent)) == ["result.json"]
    for path in (out, out.parent, out.parent.parent):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid()), path


@pytest.mark.docker
def test_outputs_belong_to_a_non_root_caller(in_docker, tiny_model, files, tmp_path_factory):
    # The tests run as root here: stand in for a user with uid 4321, whose
    # model (saved 0600 by safetensors) must be readable to them.
    folder = tmp_path_factory.mktemp("docker-user")
    folder.chmod(0o777)
    model = shutil.copytree(tiny_model, folder / "model")
    for f in model.iterdir():
        f.chmod(0o644)
    out = folder / "caption.txt"
    r = in_docker("--image", files["jpeg"], "--model", model, "--max-new-tokens", "8", "-o", out,
                  QWENVL_DOCKER_USER="4321:4321")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert (out.stat().st_uid, out.stat().st_gid) == (4321, 4321)
    assert out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) & 0o044  # readable by others, as files made by the CLI are


@pytest.mark.docker
def test_relative_paths_and_stdin(in_docker, tiny_model, files, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(files["jpeg"], work / "local.jpg")
    r = in_docker("--image", "local.jpg", "--model", tiny_model, "--max-new-tokens", "4", "-o", "out/a.txt",
                  "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert (work / "out" / "a.txt").read_text().strip() and r.stderr == b""  # --quiet: not even the mode line
    r = in_docker("--image", "-", "--model", tiny_model, "--max-new-tokens", "4", cwd=work,
                  stdin=files["jpeg"].read_bytes())
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert r.stdout.strip()


@pytest.mark.docker
def test_usage_error_and_missing_file(in_docker, tiny_model, files, tmp_path):
    r = in_docker("--image", files["jpeg"], "--task", "vqa", "--model", tiny_model)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().strip().splitlines()[-1].startswith("error: --task vqa needs a question")
    missing = tmp_path / "nowhere" / "missing.jpg"
    r = in_docker("--image", missing, "--model", tiny_model)
    assert r.returncode == 1 and r.stdout == b""
    assert str(missing) in r.stderr.decode()


@pytest.mark.docker
def test_cpu_variant_builds_and_runs(base_image, tiny_model, files, tmp_path):
    # build.sh --cpu installs torch and torchvision from a torch index before
    # requirements.txt. Neither python:3.11-slim nor PyTorch's CPU index can be
    # reached here, so this runs that build path on the local base, whose
    # pinned torch is already installed, with the index a closed port: pip
    # must find the pins satisfied and never ask it (docs/testing.md).
    tag = "qwenvl-test-cpu:latest"
    index = "http://127.0.0.1:9/simple"
    try:
        args = ["bash", str(ROOT / "build.sh"), "--cpu", "--tag", tag, "--base-image", base_image,
                "--torch-index", index]
        if Path(CA_BUNDLE).is_file():
            args += ["--ca-bundle", CA_BUNDLE]
        r = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=_env())
        assert r.returncode == 0, r.stderr[-4000:]
        pins = [ln.split()[0] for ln in (ROOT / "requirements.txt").read_text().splitlines()
                if ln.startswith(("torch==", "torchvision=="))]
        assert len(pins) == 2 and f"installing {' '.join(pins)} from {index}" in r.stderr
        labels = json.loads(_docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag).stdout)
        assert labels["org.qwenvl.variant"] == "cpu"
        r = predict_sh("--image", files["jpeg"], "--model", tiny_model, "--max-new-tokens", "4", cwd=tmp_path,
                       QWENVL_MODE="docker", QWENVL_IMAGE=tag, QWENVL_GPUS="all", QWENVL_HF_CACHE=tmp_path / "hf",
                       HF_HUB_OFFLINE=1)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        assert (f"predict.sh: running in Docker (image {tag}) on the CPU: the image is the CPU-only build, "
                "so QWENVL_GPUS=all is ignored") in r.stderr.decode()
        assert r.stdout.strip()
    finally:
        _docker("rmi", tag)


@pytest.mark.docker
def test_built_on_first_use_and_with_a_baked_model(base_image, image, tiny_model, files, tmp_path):
    first = "qwenvl-test-first-use:latest"
    _docker("rmi", first)
    try:
        r = predict_sh("--image", files["jpeg"], "--model", tiny_model, "--max-new-tokens", "4", cwd=tmp_path,
                       QWENVL_MODE="docker", QWENVL_IMAGE=first, BASE_IMAGE=base_image,
                       QWENVL_CA_BUNDLE=CA_BUNDLE if Path(CA_BUNDLE).is_file() else "",
                       QWENVL_HF_CACHE=tmp_path / "hf", HF_HUB_OFFLINE=1)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        assert f"image {first} not found: building it" in r.stderr.decode() and r.stdout.strip()
    finally:
        _docker("rmi", first)

    baked = "qwenvl-test-baked:latest"
    try:
        _build("--bake-model", tiny_model, tag=baked, base=base_image)
        r = predict_sh("--image", files["jpeg"], "--max-new-tokens", "4", cwd=tmp_path, QWENVL_MODE="docker",
                       QWENVL_IMAGE=baked, QWENVL_HF_CACHE=tmp_path / "hf")
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        assert r.stdout.strip()
    finally:
        _docker("rmi", baked)


def test_container_tier_skip_names_its_reason_and_the_command(tmp_path):
    env = {k: v for k, v in _env().items() if k != "QWENVL_DOCKER_START_ERROR"}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    # a docker client whose engine does not answer, whether or not this machine has Docker
    stand_in = tmp_path / "bin" / "docker"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///nonexistent/docker.sock. "
                        "Is the docker daemon running?' >&2\nexit 1\n")
    stand_in.chmod(0o755)
    env["PATH"] = f"{stand_in.parent}{os.pathsep}{env['PATH']}"
    r = subprocess.run([sys.executable, "-m", "pytest", f"{__file__}::test_image_runs_on_its_own_as_a_non_root_user",
                        "-rs", "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    skip = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert len(skip) == 1 and "container tier: no Docker engine (" in skip[0], r.stdout[-2000:]
    assert "/nonexistent/docker.sock" in skip[0] and ENABLE in skip[0]


# --- the flags predict.sh mounts are the CLI's path-taking flags ---------------

PATH_METAVAR = r"^(SRC|FILE|PATH|DIR)$|\.[A-Za-z0-9]+$"  # SRC, FILE, PATH, DIR, or a file name like OUT.png


def parser_path_flags() -> dict[str, bool]:
    """option string -> takes several values, for every flag of the CLI's parser that names a path.

    Derived from the parser (metavars; --model, which may be a local folder),
    never listed here: a new path flag shows up by itself."""
    import re

    sys.path.insert(0, str(ROOT))
    from qwenvl.cli import build_parser

    found = {}
    for action in build_parser()._actions:
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if re.search(PATH_METAVAR, metavar) or action.dest == "model":
            for option in action.option_strings:
                found[option] = action.nargs in ("+", "*")
    return found


def script_path_flags() -> dict[str, bool]:
    r = subprocess.run(["bash", "-c", ". scripts/docker_predict.sh && _qv_flag_table"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = dict(line.split() for line in r.stdout.splitlines())
    kinds = {"in", "out", "outdir", "model", "batch"}
    assert {k.rstrip("+") for k in table.values()} <= kinds, table
    return {flag: kind.endswith("+") for flag, kind in table.items()}


def test_mounted_flags_are_exactly_the_parsers_path_flags():
    parser, script = parser_path_flags(), script_path_flags()
    assert {"--image", "--output", "--model"} <= set(parser)  # the derivation finds what it must
    assert script == parser, (f"only in scripts/docker_predict.sh: {sorted(set(script) - set(parser))}; "
                              f"only in the parser: {sorted(set(parser) - set(script))}")


def test_every_path_flag_of_the_table_is_mounted(tmp_path):
    # Each flag of the table, given an existing file outside the current folder, yields a mount.
    (tmp_path / "cwd").mkdir()
    for flag in script_path_flags():
        target = tmp_path / flag.strip("-") / "x.json"
        target.parent.mkdir()
        target.write_text("{}")
        m = mounts(dry_run(flag, target, cwd=tmp_path / "cwd"))
        assert str(target) in m or str(target.parent) in m, (flag, m)


def test_the_docs_the_docker_files_point_to_exist_and_list_every_build_option():
    import re

    for name in ("Dockerfile", "build.sh", "predict.sh", "test.sh", ".ci/run"):
        for doc in re.findall(r"docs/[\w-]+\.md", (ROOT / name).read_text()):
            assert (ROOT / doc).is_file(), f"{name} points to {doc}, which does not exist"
    help_text = subprocess.run(["bash", str(ROOT / "build.sh"), "--help"], capture_output=True, text=True).stdout
    options = set(re.findall(r"^  (--[a-z-]+)", help_text, re.M))
    assert {"--cpu", "--cuda", "--base-image", "--ca-bundle"} <= options
    doc = (ROOT / "docs" / "docker.md").read_text()
    assert not {o for o in options if f"`{o}" not in doc}, "build.sh options missing from docs/docker.md"
