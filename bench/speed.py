#!/usr/bin/env python3
"""CPU speed of the model paths (issue 7): stock bf16, qwenvl's bf16 path, --quantize int8.

    .venv/bin/python bench/speed.py                      # full-size random checkpoint, ~10 min on 2 cores
    .venv/bin/python bench/speed.py --tokens 16          # shorter decode runs
    .venv/bin/python bench/speed.py --checkpoint DIR     # another checkpoint (e.g. the real one)
    .venv/bin/python bench/speed.py --dtype float32 --variants stock,int8,int8-cached
                                   # int8 with float32 activations (fbgemm, CPUs without native bf16)
                                   # against unquantized float32

Uses the full-size random-weight Qwen3-VL-2B checkpoint of bench/benchmark.py
(~/.cache/qwenvl-bench/qwen3-vl-2b-random, built there once if missing) and
test_images/sample.jpg (800x600 document, "Extract all text.").

One run, one model process at a time (each variant in its own process, so
peak RSS is that variant's), in this order:
  * the time to read the weights file once from a warm page cache;
  * stock: plain `AutoModelForImageTextToText.from_pretrained` (bf16);
  * bf16:  qwenvl.accel.load_model(..., quantize="none") (the CLI's default);
  * int8:  qwenvl.accel.load_model(..., quantize="int8"): quantizes, writes the
           int8 weight cache (a temporary folder of this run);
  * int8-cached: the same, a second time: reads the cached int8 weights.
  * int8-lm, int8-lm-cached (not by default): int8 for the language model
           only, the vision tower in bf16 (what the vision tower's int8 costs in agreement).
For each: import time (torch, transformers; apart from the load), load time
(processor + model), ready time (load + reading one element of every 4 KB
page of every weight: what a zero-copy mmap load leaves to the first request), prefill
time (to the first token, after a warm-up, best of the runs), decode tokens/s
(best run), peak RSS (of loading and the timed runs). Then, untimed, the
stock run's greedy tokens and logits over --agree-steps steps are the
reference: the other paths
are teacher-forced on those tokens through `generate` (their real decode
path) and report the relative logit error (first step = the fixed prompt's
next-token logits, and the mean over all steps) and how many of their own
greedy choices agree with the reference tokens. Timings on a shared machine
are noisy: the figures to read are the ratios within one run.

Prints a table and writes JSON (default bench/results/speed-cpu.json).

`--requests` measures instead the whole request a user runs, once per path,
each in its own process:
    python predict.py --image test_images/sample.jpg --device cpu --max-new-tokens 16 \
        --ignore-eos --format json [--dtype D] [--quantize int8]
for --dtype float32, auto and bfloat16, and --quantize int8 twice (the first
run quantizes and writes the int8 cache, the second reads it): process wall
time (each process ends as that checkout's predict.py ends it:
`cli.end_process`), the record's load and generate times, prefill (first
forward) and decode tokens/s (later forwards; timed by wrapping the model's
forward, nothing else changed), peak RSS (VmHWM), and the "dtype auto" line. Before each request the
weights files are read once, untimed, so that every path starts with them in
the page cache (float32's 13 GB would otherwise push them out for the next). `--baseline-root DIR` adds the
int8 path of another checkout (e.g. the previous commit) run the same way.
`--repeat N` runs every path N times, in N rounds of all the paths (so that a
slow spell of a shared machine falls on all of them), and reports each path's
median run, every run's total beside it; the ratios are the medians'.
float32 runs last whatever the order asked for (the machine is slow for a
while after its 13 GB).
To see an AVX2-only CPU on a newer one, run it under
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
Every table is headed by the CPU as PyTorch sees it (qwenvl.device.cpu_info).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "test_images" / "sample.jpg"
DEFAULT_CHECKPOINT = Path("~/.cache/qwenvl-bench/qwen3-vl-2b-random").expanduser()
RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Extract all text."

TARGETS = {
    "bf16_decode_tok_s_min": 6.5,
    "bf16_prefill_s_max": 4.5,
    "int8_decode_over_bf16_min": 1.7,
    "int8_peak_rss_gb_max": 3.5,
    "int8_prefill_over_bf16_max": 1.10,
    "load_over_read_max": 1.5,
}



def peak_rss_gb() -> float:
    """This process's peak resident set (GB): VmHWM, which starts afresh at exec.

    (ru_maxrss does not on Linux: a child inherits its parent's peak at fork,
    so a parent that once held a big checkpoint would raise every request's.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def warm_page_cache(*folders: Path) -> None:
    """Read every safetensors file of `folders` once (untimed), so that each request starts
    with the weights in the page cache whatever ran before it (float32 fills 13 GB)."""
    for folder in folders:
        for file in sorted(Path(folder).glob("*.safetensors")):
            read_file_once(file, times=1)

def read_file_once(path: Path, times: int = 2) -> float:
    """Seconds to read the weights file once (the last of `times` reads: warm page cache)."""
    buf = bytearray(1 << 24)
    view = memoryview(buf)
    best = None
    for _ in range(times):
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
        best = time.perf_counter() - t0
    return best


# --- the worker: one model path in its own process ---------------------------


class _Recorder:
    """A logits processor: times each step, keeps raw logits, optionally forces tokens."""

    def __init__(self, prompt_len: int, force: list[int] | None = None, keep: bool = True):
        self.prompt_len, self.force, self.keep = prompt_len, force, keep
        self.times: list[float] = []
        self.logits: list = []
        self.choices: list[int] = []

    def __call__(self, input_ids, scores):
        import torch

        self.times.append(time.perf_counter())
        step = input_ids.shape[1] - self.prompt_len
        if self.keep:
            self.logits.append(scores[0].float().clone())
        self.choices.append(int(scores[0].argmax()))
        if self.force is not None and step < len(self.force):
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.force[step]] = 0.0
            return forced
        return scores


def touch_weights(model) -> int:
    """Read one element of every 4 KB page of every weight a request reads whole; returns the bytes.

    This faults in what a zero-copy (mmap) from_pretrained only mapped: the
    part of loading that would otherwise fall on the first request.
    """
    seen, total = set(), 0
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or getattr(out, "weight", None) is not inp.weight:
        # an input table not shared with the output head is only read a row per token:
        # touching all of it would add what no request reads (int8: 0.6 GB) to the peak RSS
        seen.add(inp.weight.data_ptr())
    for t in list(model.parameters()) + list(model.buffers()):
        for x in ([t.qdata, t.scale] if hasattr(t, "qdata") else [t]):
            x = x.detach()
            if x.numel() == 0 or x.data_ptr() in seen:
                continue
            seen.add(x.data_ptr())
            x.reshape(-1)[:: max(1, 4096 // x.element_size())].float().sum()
            total += x.numel() * x.element_size()
    return total


def worker(spec: dict) -> dict:
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from qwenvl.session import ModelSession, _quiet_libraries

    _quiet_libraries()
    from transformers import GenerationConfig, LogitsProcessorList

    variant, checkpoint = spec["variant"], spec["checkpoint"]
    t_import = time.perf_counter()
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401 (timed apart from the load)
    from transformers.models.qwen3_vl import modeling_qwen3_vl  # noqa: F401

    if variant.startswith("int8"):
        import torchao.quantization  # noqa: F401

        import qwenvl.int8

        # int8-lm: the language model's linears only (the vision tower stays in the load dtype)
        qwenvl.int8.INT8_VISION = not variant.startswith("int8-lm")
    import_s = time.perf_counter() - t_import
    t0 = time.perf_counter()
    if variant == "stock":
        processor = AutoProcessor.from_pretrained(checkpoint)
        model = AutoModelForImageTextToText.from_pretrained(
            checkpoint, dtype=getattr(torch, spec.get("dtype", "bfloat16")), use_safetensors=True
        ).eval()
        load_s = time.perf_counter() - t0
        session = ModelSession.__new__(ModelSession)  # only for prepare()
        session.processor, session.model = processor, model
    else:
        session = ModelSession(checkpoint, device="cpu", dtype=spec.get("dtype", "bfloat16"),
                               quantize="int8" if variant.startswith("int8") else "none")
        load_s = session.load_s
        model = session.model
    t_touch = time.perf_counter()
    touched = touch_weights(model)
    touch_s = time.perf_counter() - t_touch
    rss_after_load = peak_rss_gb()

    image = Image.open(IMAGE).convert("RGB")
    conv = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}]]
    t1 = time.perf_counter()
    inputs = session.prepare(conv)
    preprocess_s = time.perf_counter() - t1
    prompt_len = int(inputs["input_ids"].shape[1])

    def run(tokens: int, force=None, keep=False) -> _Recorder:
        rec = _Recorder(prompt_len, force, keep)
        config = GenerationConfig(do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                                  eos_token_id=None, pad_token_id=0)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([rec]))
        rec.start = start
        return rec

    first = run(2)  # warm-up: first touch of every weight page, allocator, kernels
    first_prefill = first.times[0] - first.start
    # the timed requests first: the peak RSS is that of loading and serving them,
    # not of the agreement bookkeeping below (64 steps of full logits)
    timed = [run(spec["tokens"] + 1) for _ in range(spec["runs"])]
    peak_rss = peak_rss_gb()
    ref = torch.load(spec["reference"]) if spec.get("reference") else None
    rec = run(spec["agree_steps"], force=ref["tokens"] if ref is not None else None, keep=True)
    logits = torch.stack(rec.logits)
    agreement = None
    if ref is None:
        if spec.get("save_reference"):
            torch.save({"tokens": rec.choices, "logits": logits}, spec["save_reference"])
    else:
        ref_logits = ref["logits"]
        finite = torch.isfinite(logits) & torch.isfinite(ref_logits)  # eos masked by min_new_tokens
        logits, ref_logits = logits.where(finite, 0.0), ref_logits.where(finite, 0.0)
        rel = ((logits - ref_logits).norm(dim=-1) / ref_logits.norm(dim=-1)).tolist()
        agree = sum(int(a == b) for a, b in zip(rec.choices, ref["tokens"]))
        agreement = {
            "steps": len(rec.choices),
            "rel_logit_error_prompt": rel[0],
            "rel_logit_error_mean": sum(rel) / len(rel),
            "rel_logit_error_max": max(rel),
            "greedy_agreement": agree / len(rec.choices),
            "greedy_agree_count": agree,
            "bit_identical": bool(torch.equal(logits, ref_logits)),
        }
    prefill = min(r.times[0] - r.start for r in timed)
    decode = max((len(r.times) - 1) / (r.times[-1] - r.times[0]) for r in timed if len(r.times) > 1)
    from qwenvl.accel import Int8Linear

    return {
        "variant": variant,
        "import_s": import_s,
        "load_s": load_s,
        # every weight page faulted in (the mapped file read from the page cache): load + touch = ready
        "touch_s": touch_s,
        "touched_gb": touched / 1e9,
        "ready_s": load_s + touch_s,
        "first_request_extra_s": first_prefill - prefill,
        "preprocess_s": preprocess_s,
        "prompt_tokens": prompt_len,
        "prefill_s": prefill,
        "prefill_runs_s": [r.times[0] - r.start for r in timed],
        "decode_tok_s": decode,
        "decode_runs_tok_s": [(len(r.times) - 1) / (r.times[-1] - r.times[0]) for r in timed if len(r.times) > 1],
        "peak_rss_gb": peak_rss,
        "rss_after_load_gb": rss_after_load,
        "int8_linears": sum(isinstance(m, Int8Linear) for m in model.modules()),
        "threads": torch.get_num_threads(),
        "agreement": agreement,
    }


# --- whole requests through the CLI --------------------------------------------

REQUEST = ["--image", "test_images/sample.jpg", "--device", "cpu", "--max-new-tokens", "16",
           "--ignore-eos", "--format", "json"]
REQUEST_PATHS = {
    "float32": ["--dtype", "float32"],
    "auto": ["--dtype", "auto"],
    "bfloat16": ["--dtype", "bfloat16"],
    "int8": ["--quantize", "int8"],          # quantizes, writes the int8 cache
    "int8-cached": ["--quantize", "int8"],   # reads it
}


def on_import(name: str, patch) -> None:
    """Call patch(module) once the module `name` is imported (by whoever imports it)."""
    import importlib.abc
    import importlib.util

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            found = importlib.util.find_spec(fullname)
            if found is None or found.loader is None:
                return found
            execute = found.loader.exec_module

            def exec_module(module):
                execute(module)
                patch(module)

            found.loader.exec_module = exec_module
            return found

    sys.meta_path.insert(0, Finder())


_REQUEST_CODE: list[int] = []


def request_worker(spec: dict) -> dict:
    """One CLI request in this process: the record, forward times, peak RSS."""
    import contextlib
    import io

    root = spec["root"]
    sys.path.insert(0, root)
    os.chdir(root)
    stamps: list[float] = []

    def time_forward(module) -> None:
        import functools

        cls = module.Qwen3VLForConditionalGeneration
        forward = cls.forward

        @functools.wraps(forward)  # generate() reads the signature
        def timed_forward(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            stamps.append(time.perf_counter())
            return out

        cls.forward = timed_forward

    # patched when the CLI imports it, not imported here first: the CLI's order of work is what is
    # timed (with int8 it starts packing weights before it imports transformers, 3-4 s of imports)
    on_import("transformers.models.qwen3_vl.modeling_qwen3_vl", time_forward)
    from qwenvl import cli

    if hasattr(cli, "end_process"):  # the process then ends as the checkout's predict.py ends it
        atexit.register(cli.end_process, _REQUEST_CODE)  # (set after the RESULT line)

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(spec["argv"])
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"exit {code}: {err.getvalue()[-2000:]}")
    if not stamps:
        raise SystemExit("the model's forward was never timed (was Qwen3VLForConditionalGeneration imported?)")
    record = json.loads(out.getvalue())
    timings = record["timings"]
    gen_start = t0 + wall - timings["total_s"] + timings["load_s"] + timings.get("preprocess_s", 0.0)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    return {
        "argv": spec["argv"],
        "dtype": record.get("dtype"),
        "quantize": record.get("quantize"),
        "cli_wall_s": wall,
        "load_s": timings["load_s"],
        "preprocess_s": timings.get("preprocess_s"),
        "generate_s": timings["generate_s"],
        "total_s": timings["total_s"],
        "prefill_s": stamps[0] - gen_start if stamps else None,
        "decode_tok_s": decode,
        "prompt_tokens": record["usage"]["prompt_tokens"],
        "completion_tokens": record["usage"]["completion_tokens"],
        "peak_rss_gb": peak_rss_gb(),
        # CPU seconds of the process (all threads): less sensitive than wall time to other processes
        "cpu_s": sum(getattr(resource.getrusage(resource.RUSAGE_SELF), k) for k in ("ru_utime", "ru_stime")),
        "notes": [line for line in err.getvalue().splitlines()
                  if line.startswith(("dtype auto", "warning", "int8:"))],
    }


def run_requests(args, checkpoint: Path, cpu: dict) -> dict:
    results = {}
    # float32 last: after its 13 GB the machine spends a while reclaiming memory, which slowed
    # whichever request came next by 10-25% (auto after float32, against bfloat16 later)
    names = sorted(args.paths.split(","), key=lambda n: n == "float32")
    paths = [(name, str(ROOT)) for name in names]
    if args.baseline_root:
        at = len(paths) - (names[-1] == "float32")  # before float32
        paths[at:at] = [(f"baseline-{name}", str(args.baseline_root)) for name in names if name.startswith("int8")]
    samples: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            # one untimed request first: the first request of a run was slow whatever its path (auto
            # took 48.9 s against bfloat16's 22.0 s, the same code, at the same CPU seconds: the
            # machine was still reclaiming the memory of what ran before, float32's 13 GB in a
            # later round)
            warm_page_cache(checkpoint)
            print(f"round {round_ + 1} of {args.repeat}: warm-up request (untimed) ...", file=sys.stderr, flush=True)
            spec = {"root": str(ROOT), "argv": REQUEST + ["--model", str(checkpoint), "--dtype", "bfloat16",
                                                          "--max-pixels", str(64 * 32 * 32), "--max-new-tokens", "1"]}
            subprocess.run([sys.executable, __file__, "--_request", json.dumps(spec)], capture_output=True, cwd=ROOT)
            for name, root in paths:
                cache = Path(tmp) / ("base" if name.startswith("baseline") else "ours")
                env = dict(os.environ, QWENVL_INT8_CACHE=str(cache))
                if name.removeprefix("baseline-") == "int8":  # the first run: it quantizes, with no cache
                    shutil.rmtree(cache, ignore_errors=True)
                elif name.endswith("int8-cached") and not any(cache.glob("*.safetensors")):
                    # no first int8 request before it: write the cache with a load only (not timed)
                    print(f"writing the int8 cache for {name} (load only) ...", file=sys.stderr, flush=True)
                    code = (f"import sys; sys.path.insert(0, {root!r}); from qwenvl.accel import load_model; "
                            f"load_model({str(checkpoint)!r}, 'bfloat16', 'cpu', 'int8', print)")
                    subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                warm_page_cache(checkpoint, cache)
                extra = REQUEST_PATHS[name.removeprefix("baseline-")]
                spec = {"root": root, "argv": REQUEST + ["--model", str(checkpoint)] + extra}
                print(f"request {name} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--_request", json.dumps(spec)],
                                      capture_output=True, text=True, cwd=root, env=env)
                process_s = time.perf_counter() - t0
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"request {name} failed (exit {proc.returncode})")
                r = json.loads(line[-1][7:])
                r["process_s"] = process_s
                samples.setdefault(name, []).append(r)
                print(f"  {process_s:.1f} s in all: load {r['load_s']:.1f} s, generate {r['generate_s']:.1f} s, "
                      f"decode {r['decode_tok_s'] or 0:.2f} tok/s, peak RSS {r['peak_rss_gb']:.2f} GB "
                      f"({r['dtype']}{', int8' if r['quantize'] == 'int8' else ''})", file=sys.stderr, flush=True)
    results = {name: median_request(runs) for name, runs in samples.items()}
    ratios = {}
    f32 = results.get("float32")
    dtypes = [results[k] for k in ("float32", "bfloat16") if k in results]
    fastest = min(dtypes, key=lambda r: r["process_s"]) if dtypes else None
    if fastest and "auto" in results:
        ratios["auto_over_fastest_dtype"] = results["auto"]["process_s"] / fastest["process_s"]
    cached = results.get("int8-cached")
    if f32 and cached:
        ratios["int8_cached_over_float32_total"] = cached["process_s"] / f32["process_s"]
        ratios["int8_cached_decode_over_float32"] = cached["decode_tok_s"] / f32["decode_tok_s"]
    if cached and "baseline-int8-cached" in results:
        ratios["int8_cached_over_baseline_total"] = cached["process_s"] / results["baseline-int8-cached"]["process_s"]
    if cached:
        ratios["int8_cached_peak_rss_gb"] = max(cached["peak_rss_gb_runs"])  # the highest of its runs
    return {"results": results, "ratios": ratios}


def median_request(runs: list[dict]) -> dict:
    """The run of median total time (the lower middle one of an even count), with every run's total and
    peak RSS beside it."""
    chosen = dict(sorted(runs, key=lambda r: r["process_s"])[(len(runs) - 1) // 2])
    chosen["process_s_runs"] = [round(r["process_s"], 2) for r in runs]
    chosen["peak_rss_gb_runs"] = [round(r["peak_rss_gb"], 3) for r in runs]
    return chosen


def print_requests(report: dict) -> None:
    print(cpu_line(report["cpu"]))
    print("request: predict.py " + " ".join(REQUEST) + " [--dtype D | --quantize int8]")
    head = (f"{'path':21} {'dtype':9} {'total s':>7} {'load s':>6} {'generate s':>10} {'prefill s':>9} "
            f"{'decode tok/s':>12} {'peak RSS GB':>11} {'CPU s':>6}")
    print(head)
    print("-" * len(head))
    for name, r in report["requests"]["results"].items():
        print(f"{name:21} {r['dtype']:9} {r['process_s']:7.1f} {r['load_s']:6.1f} {r['generate_s']:10.1f} "
              f"{r['prefill_s'] or 0:9.1f} {r['decode_tok_s'] or 0:12.2f} {r['peak_rss_gb']:11.2f} {r['cpu_s']:6.0f}")
    if any(len(r["process_s_runs"]) > 1 for r in report["requests"]["results"].values()):
        print("(each path's median run of several; every run's total:)")
        for name, r in report["requests"]["results"].items():
            print(f"  {name:19} " + " ".join(f"{t:.1f}" for t in r["process_s_runs"]) + " s")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in report['machine']['load_average_at_end'])} "
          f"({report['machine']['cpus']} CPUs)")
    print()
    for k, v in report["requests"]["ratios"].items():
        print(f"{k:34} {v:.2f}")
    for name, r in report["requests"]["results"].items():
        for note in r["notes"]:
            if note.startswith("dtype auto"):
                print(f"{name}: {note}")


def cpu_line(cpu: dict | None) -> str:
    return _benchmark().cpu_line(cpu)


def cpu_record() -> dict:
    return _benchmark().cpu_record()


def _benchmark():
    """bench/benchmark.py: the checkpoint builder and the CPU record this script shares with it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark

    return benchmark


# --- the parent ---------------------------------------------------------------


def ensure_checkpoint(path: Path) -> Path:
    """A checkpoint of your own is used as it is; the random one of benchmark.py is (re)built when stale."""
    benchmark = _benchmark()  # builds the same full-size random checkpoint (real tokenizer, real template)

    built_here = (path / ".complete").is_file()
    if benchmark.checkpoint_ready(path) or (not built_here and (path / "model.safetensors").is_file()):
        return path
    print(f"building the full-size random checkpoint in {path} (once)", file=sys.stderr)
    return benchmark.build_full_checkpoint(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--variants", default="stock,bf16,int8,int8-cached")
    ap.add_argument("--tokens", type=int, default=32, help="decode tokens per timed run")
    ap.add_argument("--runs", type=int, default=3, help="timed generate runs per variant (best is kept)")
    ap.add_argument("--agree-steps", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="without --requests: every variant's dtype, the reference's too (float32: int8 on "
                         "fbgemm, as on CPUs without native bf16, against unquantized float32)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed-cpu.json")
    ap.add_argument("--requests", action="store_true", help="time whole CLI requests instead (see above)")
    ap.add_argument("--paths", default=",".join(REQUEST_PATHS), help="with --requests: which paths")
    ap.add_argument("--baseline-root", type=Path, help="with --requests: also run the int8 path of this checkout")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --requests: rounds of every path, one after the other; each path's figures are "
                         "those of its median run")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_request", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        print("RESULT " + json.dumps(worker(json.loads(args._worker))), flush=True)
        return 0
    if args._request:
        print("RESULT " + json.dumps(request_worker(json.loads(args._request))), flush=True)
        _REQUEST_CODE.append(0)
        return 0

    checkpoint = ensure_checkpoint(args.checkpoint.expanduser())
    cpu = cpu_record()
    print(cpu_line(cpu), file=sys.stderr)
    if args.requests:
        report = {"cpu": cpu, "checkpoint": str(checkpoint),
                  "command": "python bench/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        report["requests"] = run_requests(args, checkpoint, cpu)
        report["machine"]["load_average_at_end"] = os.getloadavg()
        print_requests(report)
        out = args.out if args.out != RESULTS / "speed-cpu.json" else RESULTS / "requests-cpu.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
        return 0
    weights = sorted(checkpoint.glob("*.safetensors"))
    read_s = sum(read_file_once(w) for w in weights)
    weights_gb = sum(w.stat().st_size for w in weights) / 1e9
    print(f"weights {weights_gb:.2f} GB, read once (warm cache) in {read_s:.2f} s", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = str(Path(tmp) / "reference.pt")
        # int8 quantizes and writes its weight cache here; int8-cached then maps it
        os.environ["QWENVL_INT8_CACHE"] = str(Path(tmp) / "int8-cache")
        for variant in args.variants.split(","):
            spec = {"variant": variant, "checkpoint": str(checkpoint), "tokens": args.tokens,
                    "runs": args.runs, "agree_steps": args.agree_steps, "dtype": args.dtype}
            if variant == "stock":
                spec["save_reference"] = ref_path
            elif os.path.exists(ref_path):
                spec["reference"] = ref_path
            print(f"running {variant} ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                                  capture_output=True, text=True, cwd=ROOT)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{variant} failed (exit {proc.returncode})")
            results[variant] = json.loads(line[-1][7:])
            r = results[variant]
            print(f"  load {r['load_s']:.1f} s, prefill {r['prefill_s']:.2f} s, decode {r['decode_tok_s']:.2f} tok/s, "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)

    report = summarize(results, read_s, weights_gb)
    report.update({
        "command": "python bench/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": str(checkpoint),
        "cpu": cpu,
        "dtype": args.dtype,
        "image": str(IMAGE.relative_to(ROOT)),
        "prompt": PROMPT,
        "prompt_tokens": next((r["prompt_tokens"] for r in results.values()), None),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    })
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def summarize(results: dict, read_s: float, weights_gb: float) -> dict:
    stock, bf16, int8 = (results.get(k) for k in ("stock", "bf16", "int8"))
    int8 = int8 or results.get("int8-cached")
    base = bf16 or stock
    ratios, checks = {}, {}
    if stock and bf16:
        ratios["bf16_prefill_speedup_over_stock"] = stock["prefill_s"] / bf16["prefill_s"]
        ratios["bf16_decode_speedup_over_stock"] = bf16["decode_tok_s"] / stock["decode_tok_s"]
    if base:
        checks["bf16_decode_tok_s"] = (base["decode_tok_s"], base["decode_tok_s"] >= TARGETS["bf16_decode_tok_s_min"])
        checks["bf16_prefill_s"] = (base["prefill_s"], base["prefill_s"] <= TARGETS["bf16_prefill_s_max"])
        ratios["load_over_read"] = base["load_s"] / read_s
        ratios["ready_over_read"] = base["ready_s"] / read_s
        checks["load_over_read"] = (ratios["load_over_read"], ratios["load_over_read"] <= TARGETS["load_over_read_max"])
    if int8 and base:
        ratios["int8_decode_over_bf16"] = int8["decode_tok_s"] / base["decode_tok_s"]
        ratios["int8_prefill_over_bf16"] = int8["prefill_s"] / base["prefill_s"]
        ratios["int8_load_over_read"] = int8["load_s"] / read_s
        checks["int8_decode_over_bf16"] = (ratios["int8_decode_over_bf16"],
                                           ratios["int8_decode_over_bf16"] >= TARGETS["int8_decode_over_bf16_min"])
        checks["int8_prefill_over_bf16"] = (ratios["int8_prefill_over_bf16"],
                                            ratios["int8_prefill_over_bf16"] <= TARGETS["int8_prefill_over_bf16_max"])
        checks["int8_peak_rss_gb"] = (int8["peak_rss_gb"], int8["peak_rss_gb"] <= TARGETS["int8_peak_rss_gb_max"])
    cached = results.get("int8-cached")
    if cached:
        ratios["int8_cached_load_over_read"] = cached["load_s"] / read_s
        ratios["int8_cached_ready_over_read"] = cached["ready_s"] / read_s
    return {"read_weights_s": read_s, "weights_gb": weights_gb, "targets": TARGETS, "ratios": ratios,
            "checks": {k: {"value": v, "met": ok} for k, (v, ok) in checks.items()}}


def print_table(report: dict) -> None:
    res = report["results"]
    print(cpu_line(report["cpu"]))
    print(f"\nprompt: {report.get('image')} + {report.get('prompt')!r} = {report.get('prompt_tokens')} tokens")
    print(f"weights file {report['weights_gb']:.2f} GB read once from a warm page cache: {report['read_weights_s']:.2f} s")
    head = f"{'path':11} {'load s':>7} {'load/read':>9} {'ready s':>7} {'prefill s':>9} {'decode tok/s':>12} {'peak RSS GB':>11}  agreement with stock {report.get('dtype', 'bfloat16')}"
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        a = r.get("agreement")
        agree = "reference" if a is None else (
            "bit-identical" if a["bit_identical"] else
            f"rel. logit err {a['rel_logit_error_prompt']:.3f} (prompt) / {a['rel_logit_error_mean']:.3f} (mean), "
            f"greedy {a['greedy_agree_count']}/{a['steps']}")
        print(f"{name:11} {r['load_s']:7.2f} {r['load_s'] / report['read_weights_s']:9.2f} {r['ready_s']:7.2f} {r['prefill_s']:9.2f} "
              f"{r['decode_tok_s']:12.2f} {r['peak_rss_gb']:11.2f}  {agree}")
    print()
    for k, v in report["ratios"].items():
        print(f"{k:34} {v:.2f}")
    print()
    for k, c in report["checks"].items():
        print(f"{k:34} {c['value']:.2f}  {'met' if c['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
