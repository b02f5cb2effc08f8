"""Which device and dtype a session runs on, and why (imports torch lazily).

`resolve_device` turns --device into cuda, mps or cpu; `resolve_dtype` turns
--dtype into a torch dtype name. `cpu_info` describes the CPU as PyTorch sees
it (so `ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` limits are followed, as
PyTorch's kernels follow them); the session keeps it, with the reason for the
dtype, as `device_info`.

The CPU rule for `--dtype auto` (measured with bench/kernels.py and
bench/speed.py, docs/performance.md):
  * a CPU with native bfloat16 (AVX-512 BF16 or AMX on x86, BF16 on ARM, as
    oneDNN uses it) -> bfloat16: its bf16 matrix products are faster than float32
    and it holds half the memory;
  * any other CPU (AVX2-only x86: Intel Core 12th gen and later, AMD Zen 2/3,
    many cloud VMs) -> float32: PyTorch runs bf16 matrix products there through
    slow conversions (about 3.6x slower for a request);
  * unless float32 does not fit the memory available (the 2B model peaks near
    13 GB in float32): then bfloat16, and one line says so.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

from .errors import ModelError, first_line

# Peak resident memory of a float32 request per byte of bf16 checkpoint:
# 13.2 GB for the 4.26 GB Qwen3-VL-2B file (bench/speed.py, AVX2 CPU).
FLOAT32_PEAK_PER_BF16_BYTE = 3.1
FLOAT32_PEAK_DEFAULT = 13.2e9  # when the checkpoint size is not known

_CPU_INFO: dict | None = None


def cpu_info(refresh: bool = False) -> dict:
    """The CPU as PyTorch uses it: name, capability, native bf16, threads."""
    global _CPU_INFO
    if _CPU_INFO is not None and not refresh:
        return dict(_CPU_INFO)
    import platform

    import torch

    caps = {}
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    arch = str(caps.get("architecture") or platform.machine())
    _CPU_INFO = {
        "cpu_name": str(caps.get("cpu_name") or platform.processor() or arch),
        "architecture": arch,
        "capability": capability,
        "native_bf16": native_bf16(caps),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
    }
    return dict(_CPU_INFO)


def native_bf16(caps: dict | None = None) -> bool:
    """True when PyTorch's CPU matrix products run bfloat16 natively here.

    oneDNN decides (it follows ONEDNN_MAX_CPU_ISA); on x86 the CPU must also
    have bf16 instructions (AVX-512 BF16 or AMX-BF16): oneDNN accepts bf16 on
    plain AVX-512 too, but converts to float32 there.
    """
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    if caps is None:
        try:
            caps = torch.cpu.get_capabilities()
        except (AttributeError, RuntimeError):
            caps = {}
    if "avx2" in caps or "avx512_f" in caps:  # an x86 CPU
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return True  # ARM: oneDNN's check is the CPU's BF16 extension


def available_memory() -> int | None:
    """Bytes of memory available to a new process (None when unknown); a container's limit counts."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    room = cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    if available is not None:
        return available
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5)
            return int(out.stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2 (Docker, systemd)
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
)


def cgroup_room(files=CGROUP_FILES) -> int | None:
    """Bytes left under this process's cgroup memory limit (docker run --memory), None without a limit."""
    for limit_file, usage_file in files:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:  # no limit (v1 says a huge number)
            return None
        return max(0, int(limit) - usage)
    return None


def float32_peak(weights_bytes: int | None) -> float:
    """Expected peak memory of a float32 run of a checkpoint whose bf16 files hold `weights_bytes`."""
    if not weights_bytes:
        return FLOAT32_PEAK_DEFAULT
    return weights_bytes * FLOAT32_PEAK_PER_BF16_BYTE


# --- devices -------------------------------------------------------------------


def resolve_device(name: str, log: Callable[[str], None] = lambda s: None) -> str:
    """cuda, mps or cpu for --device NAME; ModelError when NAME cannot run here.

    auto prefers a usable CUDA GPU, then MPS, then the CPU; when a GPU is there
    but cannot be used (driver too old, a GPU this torch build has no kernels
    for), auto says why in one line before running on the CPU.
    """
    if name == "auto":
        problem = cuda_problem()
        if problem is None:
            return "cuda"
        if problem != "no CUDA GPU is visible" and not problem.startswith("this torch is built without CUDA"):
            log(f"warning: not using the GPU: {problem}; running on the CPU")
        if mps_available():
            return "mps"
        return "cpu"
    if name == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise ModelError(f"--device cuda: CUDA is not available on this machine ({problem}); "
                             "use --device cpu or auto")
        return "cuda"
    if name == "mps" and not mps_available():
        raise ModelError("--device mps: Apple MPS is not available on this machine; use --device cpu or auto")
    return name


def cuda_problem() -> str | None:
    """None when CUDA device 0 is usable by this torch; else why not, in a few words."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        # session._quiet_libraries ignores UserWarnings: torch's "driver too old" is one of them
        warnings.simplefilter("always")
        try:
            available = torch.cuda.is_available()
        except RuntimeError as exc:  # CUDA init errors
            return f"CUDA cannot start ({first_line(exc)})"
    told = [first_line(w.message) for w in caught if "cuda" in str(w.message).lower()
            or "driver" in str(w.message).lower()]
    if not available:
        if told:
            return f"CUDA cannot start ({told[0]})"
        gpu = nvidia_smi_gpu()
        if torch.version.cuda is None:
            return ("this torch is built without CUDA" + (f", but {gpu} is present: install a CUDA build of torch"
                                                          if gpu else ""))
        if gpu:
            return (f"{gpu} is present but torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use it "
                    "(an NVIDIA driver too old for this CUDA, or the GPU not visible to this process)")
        return "no CUDA GPU is visible"
    try:
        major, minor = torch.cuda.get_device_capability(0)
        arches = torch.cuda.get_arch_list()
    except RuntimeError as exc:
        return f"CUDA cannot start ({first_line(exc)})"
    if arches and not arch_supported(major, minor, arches):
        gpu = torch.cuda.get_device_name(0)
        return (f"{gpu} (compute capability {major}.{minor}) is not supported by torch {torch.__version__}, "
                f"built for {' '.join(arches)}")
    return None


def arch_supported(major: int, minor: int, arches: list[str]) -> bool:
    """True when a torch built for `arches` runs on a GPU of compute capability major.minor."""
    cap = major * 10 + minor
    for arch in arches:
        kind, _, num = arch.partition("_")
        digits = "".join(ch for ch in num if ch.isdigit())
        if not digits:
            continue
        value = int(digits)
        if kind == "sm" and value // 10 == major and value <= cap:
            return True  # same major: binary compatible with later minors
        if kind == "compute" and value <= cap:
            return True  # PTX: compiled at load for newer GPUs
    return False


def nvidia_smi_gpu() -> str | None:
    """The name of the first GPU nvidia-smi lists, or None (no nvidia-smi, no GPU)."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
    return f"an NVIDIA {lines[0]}" if out.returncode == 0 and lines else None


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def int8_float32_kernel() -> bool:
    """Does an int8 kernel for float32 activations (fbgemm) run here?"""
    from .int8 import fbgemm_kernel

    return fbgemm_kernel() is not None


# --- dtypes --------------------------------------------------------------------


def resolve_dtype(name: str, device: str, quantize: str = "none", weights_bytes: int | None = None,
                  log: Callable[[str], None] = lambda s: None) -> str:
    """The dtype name for --dtype NAME on `device` (see `choose_dtype` for the reason)."""
    return choose_dtype(name, device, quantize, weights_bytes, log)[0]


def choose_dtype(name: str, device: str, quantize: str = "none", weights_bytes: int | None = None,
                 log: Callable[[str], None] = lambda s: None) -> tuple[str, str]:
    """(dtype, reason). auto on the CPU logs one line: what it picked and why."""
    if name != "auto":
        if name == "bfloat16" and device == "cuda" and not cuda_native_bf16():
            raise ModelError("--dtype bfloat16: this GPU has no native bfloat16 (compute capability < 8.0); "
                             "use --dtype float16 or auto")
        if name == "bfloat16" and device == "mps" and not mps_bf16():
            raise ModelError("--dtype bfloat16: MPS has bfloat16 from macOS 14 on; use --dtype float32 or auto")
        if name == "float16" and device == "mps":
            log("warning: float16 on MPS can overflow in Qwen models (inf/NaN output); "
                "--dtype auto picks a safe dtype")
        return name, "asked for"
    if device == "cuda":
        if cuda_native_bf16():
            return "bfloat16", "the GPU has native bfloat16"
        return "float16", "the GPU has no native bfloat16 (compute capability < 8.0)"
    if device == "mps":
        if mps_bf16():
            return "bfloat16", "MPS supports bfloat16 (float16 overflows in Qwen models)"
        return "float32", "MPS here has no bfloat16 (macOS 14+ needed) and float16 overflows in Qwen models"
    info = cpu_info()
    if info["native_bf16"]:
        dtype, reason = "bfloat16", f"the CPU ({info['capability']}) has native bfloat16: faster than float32"
    elif quantize == "int8" and int8_float32_kernel():
        dtype, reason = "float32", (f"the CPU ({info['capability']}) has no native bfloat16: "
                                    "float32 activations with fbgemm's int8 kernels")
    elif quantize == "int8":  # no fbgemm (ARM64): the int8 kernels that remain take bfloat16 activations
        dtype, reason = "bfloat16", (f"the CPU ({info['capability']}) has no fbgemm int8 kernels for float32 "
                                     "activations: bfloat16 activations with int8 weights")
    else:
        need, avail = float32_peak(weights_bytes), available_memory()
        if avail is not None and avail < need:
            dtype, reason = "bfloat16", (
                f"the CPU ({info['capability']}) has no native bfloat16, so float32 would be faster, but it needs "
                f"about {need / 1e9:.0f} GB and {avail / 1e9:.1f} GB is available")
        else:
            dtype, reason = "float32", (f"the CPU ({info['capability']}) has no native bfloat16: bfloat16 runs "
                                        "about 3.6x slower than float32 there")
    hint = "" if quantize == "int8" else "; --quantize int8 is the fast path in a third of the memory"
    log(f"dtype auto: {dtype} ({reason}){hint}")
    return dtype, reason


def cuda_native_bf16() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument
        return torch.cuda.get_device_capability(0)[0] >= 8


def mps_bf16() -> bool:
    """True when the MPS backend can compute in bfloat16 (macOS 14 and later)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    is_macos_or_newer = getattr(mps, "is_macos_or_newer", None)
    if callable(is_macos_or_newer):
        try:
            return bool(is_macos_or_newer(14, 0))
        except (RuntimeError, TypeError):
            return False
    return False


def device_info(device: str, dtype: str, reason: str, quantize: str = "none") -> dict:
    """What the JSON record carries about where and how the model ran."""
    info = {"device": device, "dtype": dtype, "dtype_reason": reason, "quantize": quantize}
    if device == "cpu":
        info.update(cpu_info())
    elif device == "cuda":
        import torch

        try:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        except (RuntimeError, AssertionError):
            pass
    return info
