"""Device and dtype choice (qwenvl/device.py) on simulated CPUs, GPUs and Macs.

Each machine is simulated by replacing what torch reports about it (torch.cuda,
torch.backends.mps, the CPU capability and oneDNN's bf16 check) or the memory
reader; one test runs a real subprocess under PyTorch's own AVX2 limits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")

import qwenvl.device as devices  # noqa: E402
from qwenvl.errors import ModelError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

X86 = {"architecture": "x86_64", "cpu_name": "Test CPU", "avx2": True, "avx512_f": False,
       "avx512_bf16": False, "amx_bf16": False}
SAPPHIRE_RAPIDS = {**X86, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
SKYLAKE = {**X86, "avx512_f": True}


AVAILABLE_MEMORY = devices.available_memory


def simulate_cpu(monkeypatch, caps: dict, capability: str, mkldnn_bf16: bool, memory: int | None = 64 * 10**9):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16)
    monkeypatch.setattr(devices, "available_memory", lambda: memory)
    monkeypatch.setattr(devices, "_CPU_INFO", None)


def auto_cpu(quantize="none", weights=None):
    lines = []
    dtype, reason = devices.choose_dtype("auto", "cpu", quantize, weights, lines.append)
    return dtype, reason, lines


def test_native_bf16_cpu_picks_bfloat16(monkeypatch):
    simulate_cpu(monkeypatch, SAPPHIRE_RAPIDS, "AVX512", True)
    dtype, reason, lines = auto_cpu()
    assert dtype == "bfloat16"
    assert "native bfloat16" in reason
    assert len(lines) == 1 and lines[0].startswith("dtype auto: bfloat16")
    assert "--quantize int8" in lines[0]
    info = devices.cpu_info()
    assert info["capability"] == "AVX512" and info["native_bf16"] is True and info["threads"] >= 1


def test_avx2_cpu_picks_float32_and_names_int8(monkeypatch):
    simulate_cpu(monkeypatch, X86, "AVX2", False)
    dtype, reason, lines = auto_cpu()
    assert dtype == "float32"
    assert "AVX2" in reason and "no native bfloat16" in reason
    assert len(lines) == 1 and "float32" in lines[0] and "--quantize int8" in lines[0]


def test_avx512_without_bf16_instructions_is_not_native(monkeypatch):
    # oneDNN accepts bf16 on plain AVX-512 (Skylake) but converts it: float32 is the fast one there
    simulate_cpu(monkeypatch, SKYLAKE, "AVX512", True)
    assert devices.cpu_info()["native_bf16"] is False
    assert auto_cpu()[0] == "float32"


def test_onednn_limited_to_avx2_is_not_native(monkeypatch):
    # a bf16-capable CPU run with ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's check says no, so do we
    simulate_cpu(monkeypatch, SAPPHIRE_RAPIDS, "AVX2", False)
    assert auto_cpu()[0] == "float32"


def test_avx2_cpu_without_memory_for_float32_picks_bfloat16_and_says_why(monkeypatch):
    simulate_cpu(monkeypatch, X86, "AVX2", False, memory=8 * 10**9)
    dtype, reason, lines = auto_cpu(weights=4_260_000_000)
    assert dtype == "bfloat16"
    assert "13 GB" in reason and "8.0 GB is available" in reason
    assert len(lines) == 1 and "--quantize int8" in lines[0]


def test_float32_need_scales_with_the_checkpoint(monkeypatch):
    simulate_cpu(monkeypatch, X86, "AVX2", False, memory=8 * 10**9)
    assert auto_cpu(weights=100 * 10**6)[0] == "float32"  # a small model fits
    simulate_cpu(monkeypatch, X86, "AVX2", False, memory=None)  # memory unknown: the CPU decides
    assert auto_cpu(weights=4_260_000_000)[0] == "float32"


def test_int8_compute_dtype_follows_the_cpu_not_the_memory(monkeypatch):
    simulate_cpu(monkeypatch, X86, "AVX2", False, memory=4 * 10**9)
    monkeypatch.setattr(devices, "int8_float32_kernel", lambda: True)  # fbgemm runs (x86)
    dtype, _, lines = auto_cpu(quantize="int8", weights=4_260_000_000)
    assert dtype == "float32" and "int8" in lines[0]
    simulate_cpu(monkeypatch, SAPPHIRE_RAPIDS, "AVX512", True)
    assert auto_cpu(quantize="int8")[0] == "bfloat16"


def test_int8_without_fbgemm_keeps_bfloat16_activations(monkeypatch):
    """ARM64 without BF16: the int8 kernels that remain take bf16 activations (float32 ones run 13x slower)."""
    simulate_cpu(monkeypatch, {"architecture": "aarch64", "cpu_name": "Neoverse-N1"}, "DEFAULT", False)
    monkeypatch.setattr(devices, "int8_float32_kernel", lambda: False)
    dtype, reason, lines = auto_cpu(quantize="int8")
    assert dtype == "bfloat16" and "fbgemm" in reason and len(lines) == 1


def test_a_container_memory_limit_counts(tmp_path):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("8589934592\n")
    usage.write_text("1073741824\n")
    assert devices.cgroup_room([(str(limit), str(usage))]) == 7 * 2**30
    limit.write_text("max\n")
    assert devices.cgroup_room([(str(limit), str(usage))]) is None
    assert devices.cgroup_room([(str(tmp_path / "none"), str(usage))]) is None


def test_avx2_cpu_in_a_small_container_does_not_pick_float32(monkeypatch):
    simulate_cpu(monkeypatch, X86, "AVX2", False)
    monkeypatch.setattr(devices, "available_memory", AVAILABLE_MEMORY)  # the real reader, under a limit:
    monkeypatch.setattr(devices, "cgroup_room", lambda files=None: 8 * 10**9)  # docker run --memory 8g
    dtype, reason, lines = auto_cpu(weights=4_260_000_000)
    assert dtype == "bfloat16" and "memory" in lines[0]


def test_explicit_dtype_is_kept_on_the_cpu(monkeypatch):
    simulate_cpu(monkeypatch, X86, "AVX2", False)
    lines = []
    assert devices.choose_dtype("bfloat16", "cpu", log=lines.append) == ("bfloat16", "asked for")
    assert lines == []


def test_available_memory_reads_the_system():
    mem = devices.available_memory()
    assert mem is None or mem > 0


# --- CUDA ------------------------------------------------------------------------


def simulate_gpu(monkeypatch, capability=(8, 0), native_bf16=True, arches=("sm_80", "sm_90"), name="Test GPU"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arches))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    def is_bf16_supported(including_emulation=True):
        return native_bf16 or including_emulation  # what torch answers on a T4/V100

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_gpu_with_native_bf16_picks_bfloat16(monkeypatch):
    simulate_gpu(monkeypatch)
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_dtype("auto", "cuda") == "bfloat16"


def test_older_gpu_picks_float16_not_emulated_bf16(monkeypatch):
    simulate_gpu(monkeypatch, capability=(7, 5), native_bf16=False, arches=("sm_75", "sm_80"), name="Tesla T4")
    assert devices.resolve_device("cuda") == "cuda"
    assert devices.resolve_dtype("auto", "cuda") == "float16"
    with pytest.raises(ModelError, match="no native bfloat16"):
        devices.resolve_dtype("bfloat16", "cuda")


def test_gpu_the_torch_build_cannot_use(monkeypatch):
    simulate_gpu(monkeypatch, capability=(6, 1), native_bf16=False, arches=("sm_75", "sm_80", "sm_90"),
                 name="GeForce GTX 1080")
    with pytest.raises(ModelError) as err:
        devices.resolve_device("cuda")
    msg = str(err.value)
    assert msg.startswith("--device cuda: CUDA is not available on this machine "
                          "(GeForce GTX 1080 (compute capability 6.1) is not supported")
    assert "sm_75" in msg and "\n" not in msg
    notices = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.resolve_device("auto", notices.append) == "cpu"
    assert len(notices) == 1 and "not using the GPU" in notices[0] and "GTX 1080" in notices[0]


def test_arch_list_matching():
    assert devices.arch_supported(8, 6, ["sm_80", "sm_90"])  # same major, later minor
    assert not devices.arch_supported(7, 0, ["sm_75", "sm_80"])
    assert not devices.arch_supported(12, 0, ["sm_80", "sm_90"])
    assert devices.arch_supported(12, 0, ["sm_80", "sm_90", "compute_90"])  # PTX runs on newer GPUs


def driver_too_old(monkeypatch):
    def is_available():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12040). "
                      "Please update your GPU driver.", UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_driver_too_old_is_an_error_for_device_cuda_even_with_warnings_ignored(monkeypatch):
    driver_too_old(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # as session._quiet_libraries does
        with pytest.raises(ModelError) as err:
            devices.resolve_device("cuda")
    assert "driver on your system is too old" in str(err.value)
    assert str(err.value).startswith("--device cuda: CUDA is not available on this machine (CUDA cannot start")


def test_driver_too_old_is_a_notice_for_auto(monkeypatch):
    driver_too_old(monkeypatch)
    notices = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        assert devices.resolve_device("auto", notices.append) == "cpu"
    assert len(notices) == 1 and "driver on your system is too old" in notices[0]
    assert "running on the CPU" in notices[0]


def test_gpu_seen_by_nvidia_smi_but_not_by_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(devices, "nvidia_smi_gpu", lambda: "an NVIDIA Tesla V100")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(ModelError, match="Tesla V100 is present but torch"):
        devices.resolve_device("cuda")
    notices = []
    assert devices.resolve_device("auto", notices.append) == "cpu"
    assert len(notices) == 1 and "Tesla V100" in notices[0]


def test_no_gpu_at_all_is_quiet_for_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(devices, "nvidia_smi_gpu", lambda: None)
    notices = []
    assert devices.resolve_device("auto", notices.append) == "cpu"
    assert notices == []
    with pytest.raises(ModelError, match="--device cuda: "):
        devices.resolve_device("cuda")


def test_driver_too_old_through_the_cli(cli, tiny_model, media, monkeypatch):
    driver_too_old(monkeypatch)
    r = cli("--image", media["jpeg"], "--model", tiny_model, "--device", "cuda", "--max-new-tokens", "2")
    assert r.code == 1, r
    err = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "driver on your system is too old" in err[0]
    assert "Traceback" not in r.err and r.out == ""


# --- MPS -------------------------------------------------------------------------


@pytest.mark.parametrize("macos14, expected", [(True, "bfloat16"), (False, "float32")])
def test_mps_never_picks_float16(monkeypatch, macos14, expected):
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)
    dtype, reason = devices.choose_dtype("auto", "mps")
    assert dtype == expected and "float16 overflows" in reason


def test_mps_bfloat16_asked_for_before_macos_14_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: False)
    with pytest.raises(devices.ModelError, match="macOS 14"):
        devices.choose_dtype("bfloat16", "mps")


def test_mps_float16_asked_for_is_kept_with_a_warning():
    lines = []
    assert devices.choose_dtype("float16", "mps", log=lines.append)[0] == "float16"
    assert len(lines) == 1 and "overflow" in lines[0]


# --- the real thing ----------------------------------------------------------------


def test_avx2_limits_of_pytorch_are_followed_in_a_real_process():
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA make any x86 CPU look AVX2-only to torch: so to us."""
    code = ("import json, qwenvl.device as d; lines = [];"
            "dtype = d.resolve_dtype('auto', 'cpu', 'none', 10**6, lines.append);"
            "print(json.dumps({'info': d.cpu_info(), 'dtype': dtype, 'lines': lines}))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if torch.cpu.get_capabilities().get("architecture", "x86_64") != "x86_64":
        pytest.skip("AVX2 emulation is x86-only")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info"]["capability"] == "AVX2"
    assert out["info"]["native_bf16"] is False
    assert out["dtype"] == "float32"
    assert len(out["lines"]) == 1 and out["lines"][0].startswith("dtype auto: float32")


def test_session_holds_its_device_info(tiny_model):
    from qwenvl.session import ModelSession

    lines = []
    session = ModelSession(tiny_model, device="cpu", dtype="auto", log=lines.append)
    info = session.device_info
    cpu = devices.cpu_info()
    assert info["device"] == "cpu" and info["dtype"] == session.dtype
    assert info["capability"] == cpu["capability"] and info["native_bf16"] == cpu["native_bf16"]
    assert info["threads"] >= 1 and info["dtype_reason"]
    assert session.dtype == ("bfloat16" if cpu["native_bf16"] else "float32")
    assert sum(line.startswith("dtype auto: ") for line in lines) == 1


def test_the_json_record_says_which_cpu_and_why_that_dtype(tiny_model):
    """An AVX2-only CPU (PyTorch's own limits) through the CLI: float32, and the record says why."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--image",
                           os.path.join(ROOT, "test_images", "sample.jpg"),
                           "--model", tiny_model, "--device", "cpu", "--max-new-tokens", "2", "--format", "json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if torch.cpu.get_capabilities().get("architecture", "x86_64") != "x86_64":
        pytest.skip("AVX2 emulation is x86-only")
    record = json.loads(proc.stdout)
    info = record["device_info"]
    assert record["device"] == info["device"] == "cpu"
    assert record["dtype"] == info["dtype"] == "float32"
    assert info["capability"] == "AVX2" and info["native_bf16"] is False
    assert "bfloat16" in info["dtype_reason"] and info["threads"] >= 1
    assert sum(line.startswith("dtype auto: float32") for line in proc.stderr.splitlines()) == 1
