#!/usr/bin/env python3
"""Micro-benchmark of the CPU linear kernels int8 can use, at Qwen3-VL-2B's shapes.

    .venv/bin/python bench/kernels.py                       # this CPU
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        .venv/bin/python bench/kernels.py                   # as on an AVX2-only CPU (every kernel library limited)

Shapes (rows x in by in x out): prefill 500x2048 by 2048x6144 (the language
model's MLP), vision 1900x1024 by 1024x4096 (the vision tower's MLP for an
800x600 image), decode 1x2048 by 2048x6144 (12 weight copies in turn, so that
weights come from memory as in a model); on request (`--shapes lm_head`) the
lm_head's one-row product, 1x2048 by 2048x151936 (one copy: 311 MB of int8
already exceeds the caches; it peaks at 9.3 GB of memory with all its candidates). Each kernel: the best of several
timed calls after a warm-up (the median is kept too), in GFLOP/s (int8: GOP/s, 2 x rows x in x out per
call). Candidates: float32 and bfloat16 F.linear; torch._int_mm on dynamically
quantized activations; torch._weight_int8pack_mm (weight-only int8) with
bfloat16 and float32 activations; PyTorch's dynamic quantized linear
(quantized::linear_dynamic) under the fbgemm, x86 and onednn engines; qwenvl's
own fbgemm and onednn layers (qwenvl/int8.py: activations scaled per row);
torchao's Int8DynamicActivationInt8WeightConfig and Int8WeightOnlyConfig (eager).
Then the time to pack the weight on one thread, fbgemm and onednn (every
int8 load packs each layer).
Prints a table headed by the CPU and writes JSON (default
bench/results/kernels-<capability>.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"prefill": (500, 2048, 6144), "vision": (1900, 1024, 4096), "decode": (1, 2048, 6144)}
EXTRA_SHAPES = {"lm_head": (1, 2048, 151936)}  # only when asked for (--shapes)
ALL_SHAPES = {**SHAPES, **EXTRA_SHAPES}


def timed(fn, budget_s: float = 1.5, max_calls: int = 40) -> tuple[float, float]:
    """(best, median) seconds per call: on a shared machine the best is the kernel, the median adds the neighbours."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (time.perf_counter() - start < budget_s or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def rotating(fns):
    """One call = the next of several copies: decode weights then come from memory, not the cache, as in a model."""
    state = [0]

    def call():
        state[0] = (state[0] + 1) % len(fns)
        return fns[state[0]]()
    return call


def kernels(rows: int, k: int, n: int) -> dict:
    """name -> a call; at decode each call reads another of 12 weight copies (over 100 MB of int8), unless
    one weight is already that large."""
    copies = [one_kernel_set(rows, k, n, seed) for seed in range(12 if rows == 1 and k * n < 2 ** 26 else 1)]
    return {name: rotating([c[name] for c in copies]) for name in copies[0]}


def one_kernel_set(rows: int, k: int, n: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    w = torch.randn(n, k) * 0.02
    x = torch.randn(rows, k)
    out = {}
    out["float32 F.linear"] = lambda: F.linear(x, w)
    wb, xb = w.bfloat16(), x.bfloat16()
    out["bfloat16 F.linear"] = lambda: F.linear(xb, wb)
    scale = w.abs().amax(dim=1).clamp_min(1e-5) / 127
    qw = (w / scale[:, None]).round().clamp(-128, 127).to(torch.int8)
    qwt = qw.t()

    def int_mm():
        s = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-5) / 127
        xq = (x / s).round().clamp(-128, 127).to(torch.int8)
        return torch._int_mm(xq, qwt).float() * s * scale
    if rows > 16:  # _int_mm needs more than 16 rows
        out["torch._int_mm (dyn. act.)"] = int_mm
    sb, sf = scale.bfloat16(), scale.float()
    out["_weight_int8pack_mm bf16"] = lambda: torch.ops.aten._weight_int8pack_mm(xb, qw, sb)
    if rows == 1:  # float32 activations: ~1 GFLOP/s at many rows (measured), so decode only
        out["_weight_int8pack_mm fp32"] = lambda: torch.ops.aten._weight_int8pack_mm(x, qw, sf)
    supported = torch.backends.quantized.supported_engines
    for engine in ("fbgemm", "x86", "onednn"):
        if engine not in supported:
            continue
        torch.backends.quantized.engine = engine
        qweight = torch.quantize_per_channel(w, scale.double(), torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None)
        out[f"linear_dynamic {engine}"] = (lambda p=packed, e=engine: _with_engine(
            e, lambda: torch.ops.quantized.linear_dynamic(x, p, True)))
    # as qwenvl runs them (qwenvl/int8.py): activations scaled per row, the rows' scales applied after
    from qwenvl import int8 as q8

    linear = torch.nn.Linear(k, n, bias=False)
    if q8.fbgemm_kernel() is not None:
        layer = q8.Int8Linear.from_packed(linear, q8.fbgemm_pack_rows(qw), sf, "fbgemm")
        out["qwenvl fbgemm"] = lambda layer=layer: _with_engine("fbgemm", lambda: layer(x))
    if q8.onednn_kernel() is not None:
        layer = q8.Int8Linear.from_packed(linear, [q8.onednn_pack(qw)], sf, "onednn")
        out["qwenvl onednn"] = lambda layer=layer: layer(x)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for label, config in (("torchao int8 dyn-act", Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)),
                              ("torchao int8 weight-only", Int8WeightOnlyConfig(set_inductor_config=False))):
            lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
            lin.weight.data.copy_(wb)
            quantize_(lin, config)
            out[label + " bf16"] = lambda lin=lin: lin(xb)
    except Exception as exc:  # noqa: BLE001 (a torchao that cannot run here is a result too)
        print(f"torchao skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


def packing(k: int, n: int) -> dict:
    """Seconds to pack a k x n int8 weight on one thread (what each int8 load does per layer), fbgemm (in
    qwenvl's blocks of rows) and onednn; best of three."""
    import torch

    from qwenvl import int8 as q8

    qw = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    out = {}
    if q8.fbgemm_kernel() is not None:
        out["fbgemm"] = lambda: q8.fbgemm_pack_rows(qw)
    if q8.onednn_kernel() is not None:
        out["onednn"] = lambda: q8.onednn_pack(qw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: timed(fn, budget_s=0.0, max_calls=3)[0] for name, fn in out.items()}
    finally:
        torch.set_num_threads(threads)


def _with_engine(engine, fn):
    import torch

    torch.backends.quantized.engine = engine
    return fn()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help=f"comma-separated, of {', '.join(ALL_SHAPES)} (default: {','.join(SHAPES)})")
    args = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(ROOT))
    from qwenvl.device import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['cpu_name']} ({cpu['architecture']}), capability {cpu['capability']}, "
          f"native bf16 {'yes' if cpu['native_bf16'] else 'no'}, {cpu['threads']} threads")
    results = {}
    for shape in args.shapes.split(","):
        rows, k, n = ALL_SHAPES[shape]
        ops = 2 * rows * k * n
        results[shape] = {}
        print(f"\n{shape}: {rows}x{k} by {k}x{n}")
        for name, fn in kernels(rows, k, n).items():
            try:
                s, median = timed(fn)
            except Exception as exc:  # noqa: BLE001
                print(f"  {name:30} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                continue
            results[shape][name] = {"ms": s * 1e3, "median_ms": median * 1e3, "gops": ops / s / 1e9}
            print(f"  {name:30} {s * 1e3:9.2f} ms (median {median * 1e3:8.2f}) {ops / s / 1e9:8.1f} G(FL)OP/s",
                  flush=True)
        for name, s in packing(k, n).items():
            results[shape][f"pack {name}"] = {"ms": s * 1e3, "mb_s": k * n / s / 1e6}
            print(f"  {'packing, ' + name + ' (1 thread)':30} {s * 1e3:9.2f} ms {k * n / s / 1e6:19.0f} MB/s", flush=True)
    out = args.out or ROOT / "bench" / "results" / f"kernels-{cpu['capability'].lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "torch": torch.__version__, "results": results}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
