#!/usr/bin/env python3
"""Benchmark qwenvl on a random-weight checkpoint with the exact Qwen3-VL-2B architecture.

    .venv/bin/python bench/benchmark.py                 # CPU, bf16, N=8 (several minutes)
    .venv/bin/python bench/benchmark.py --device cuda   # a GPU machine
    .venv/bin/python bench/benchmark.py --quick         # tiny checkpoint, under a minute

The first run builds (once) a checkpoint with the real architecture (2.13 B
parameters, vocab 151936, tied embeddings) and random weights, saved in bf16
safetensors, in ~/.cache/qwenvl-bench/qwen3-vl-2b-random (or --checkpoint-dir):
load time, memory and compute are those of the real model; the answers are
noise. Every request is the same 800x600 document image (test_images/sample.jpg)
with a fixed output length (--max-new-tokens, end of turn ignored).

What it measures, all in one run, each model-running part in its own process:
  * `--help` wall time;
  * N separate CLI invocations (the shell-loop way): process start to first
    result, the CLI's model load time, peak resident memory (wait4 rusage);
  * one `--batch` run over the N images at batch size 1, and one at batch size 4;
  * through the Python API (qwenvl.session.ModelSession), after a warm-up:
    prefill time (time to first token), decode tokens/s, at batch size 1 and 4,
    peak RSS (and peak GPU memory on cuda), for --dtype and every dtype in
    --compare-dtypes (bf16 against fp32 by default).
It prints a table and writes it as JSON (default bench/results/benchmark-<device>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREDICT = ROOT / "predict.py"
IMAGE = ROOT / "test_images" / "sample.jpg"
DEFAULT_CHECKPOINT = Path("~/.cache/qwenvl-bench/qwen3-vl-2b-random").expanduser()
RESULTS = Path(__file__).resolve().parent / "results"
BUILD_VERSION = "2"  # bump when the checkpoint recipe changes: caches are rebuilt (2: Qwen's real tokenizer)

# Targets of issue 4 (on a 2-core CPU, bf16, N = 8).
TARGET_BATCH_SPEEDUP = 3.0
TARGET_BS4_OVER_BS1 = 1.3
TARGET_RSS_OVER_WEIGHTS = 1.5
TARGET_HELP_S = 0.5


# --- the checkpoint ----------------------------------------------------------


def qwen3_vl_2b_config(ids: dict):
    """The exact Qwen3-VL-2B-Instruct config.json architecture."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            hidden_act="silu",
            max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            attention_bias=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
            tie_word_embeddings=True,
            initializer_range=0.02,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            dtype="bfloat16",
        ),
        vision_config=dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            in_channels=3,
            hidden_act="gelu_pytorch_tanh",
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=2048,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
            initializer_range=0.02,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        dtype="bfloat16",
    )


def build_full_checkpoint(out: Path) -> Path:
    """Random bf16 weights, built directly in bf16 (peak ~1.3x the weights), saved as safetensors.

    The tokenizer is Qwen's real one (tools/qwen_bpe.py: its BPE ranks fetched once from PyPI) and the
    chat template the real Qwen3-VL one, so prompts have the real model's token counts.
    """
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import make_tiny_model as tiny
    import qwen_bpe
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)
    tokenizer = qwen_bpe.build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tiny.SPECIAL_TOKENS}
    config = qwen3_vl_2b_config(ids)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen3VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = tiny.generation_config(ids)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    del model
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=16, merge_size=2, temporal_patch_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": 65536, "longest_edge": 16777216},
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(
            patch_size=16, merge_size=2, temporal_patch_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        ),
        chat_template=tiny.CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    (out / ".complete").write_text(json.dumps({"version": BUILD_VERSION, "parameters": params,
                                               "tokenizer": f"qwen-bpe, vocab {config.text_config.vocab_size}"}) + "\n")
    return out


def build_tiny_checkpoint(out: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    import make_tiny_model as tiny

    tiny.build(out)
    import torch  # noqa: F401  (already imported by build)
    from transformers import AutoConfig

    del AutoConfig
    (out / ".complete").write_text(json.dumps({"version": BUILD_VERSION, "tiny": True}) + "\n")
    return out


def checkpoint_ready(path: Path) -> dict | None:
    marker = path / ".complete"
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("version") == BUILD_VERSION else None


def ensure_checkpoint(path: Path, tiny: bool, log) -> tuple[Path, float | None]:
    """Build in a child process (the parent never holds the weights); cached."""
    if checkpoint_ready(path):
        return path, None
    log(f"building the {'tiny' if tiny else 'Qwen3-VL-2B-architecture'} random checkpoint in {path} (once)...")
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_build", str(path)] + (["--quick"] if tiny else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0 or not checkpoint_ready(path):
        sys.exit(f"error: building the checkpoint failed:\n{proc.stderr[-3000:]}")
    took = time.perf_counter() - t0
    log(f"  built in {took:.1f} s")
    return path, took


def weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# --- child processes ---------------------------------------------------------


def child_env() -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("QWENVL_MODEL", None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class GpuWatch:
    """Peak GPU memory of one process, polled with nvidia-smi (the CLI has no hook for it)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak_mb = None
        self.last = 0.0

    def poll(self, pid: int) -> None:
        if not self.enabled or time.perf_counter() - self.last < 0.25:
            return
        self.last = time.perf_counter()
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
                self.peak_mb = max(self.peak_mb or 0, float(parts[1]))


def run_child(cmd: list[str], timeout: float, watch_file: Path | None = None, gpu: bool = False) -> dict:
    """Run one process; wall time, exit code, peak RSS (its own rusage), time to first output line."""
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    gpu_watch = GpuWatch(gpu)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL)
    first_line_s = None
    polling = watch_file is not None or gpu_watch.enabled
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if polling else 0)
        except BaseException:  # interrupted: never leave a model-sized child behind
            proc.kill()
            os.wait4(proc.pid, 0)
            raise
        if pid == proc.pid:
            wall = time.perf_counter() - t0
            break
        now = time.perf_counter()
        if watch_file is not None and first_line_s is None:
            try:
                with open(watch_file, "rb") as fh:
                    if b"\n" in fh.read(1 << 20):
                        first_line_s = now - t0
            except OSError:
                pass
        gpu_watch.poll(proc.pid)
        if now - t0 > timeout:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    result = {
        "rc": proc.returncode,
        "wall_s": wall,
        "max_rss_bytes": usage.ru_maxrss * 1024,  # kilobytes on Linux
        "first_line_s": first_line_s,
        "gpu_peak_mb": gpu_watch.peak_mb,
        "stdout": out_f.read().decode("utf-8", "replace"),
        "stderr": err_f.read().decode("utf-8", "replace"),
    }
    out_f.close()
    err_f.close()
    return result


def check_ok(res: dict, what: str) -> None:
    if res["rc"] != 0:
        sys.exit(f"error: {what} failed (exit {res['rc']}):\n{res['stderr'][-3000:]}")


# --- the Python API part (runs in a child process) ------------------------------


class _TimingStreamer:
    """generate() hands it the prompt, then each new token: times of each step."""

    def __init__(self):
        self.t0 = None
        self.times: list[float] = []

    def put(self, value):
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now  # the prompt
        else:
            self.times.append(now)

    def end(self):
        pass


def api_worker(spec: dict) -> dict:
    """Load through ModelSession; after a warm-up, time prefill and decode at each batch size."""
    import resource

    import torch

    from qwenvl.inputs import LoadOptions, load_image_source
    from qwenvl.prompts import TASKS, build_messages, resolve_prompt
    from qwenvl.session import GenerationSettings, ModelSession

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cuda = spec["device"] == "cuda"
    session = ModelSession(spec["checkpoint"], device=spec["device"], dtype=spec["dtype"])
    result = {"dtype": session.dtype, "device": session.device, "load_s": session.load_s,
              "threads": torch.get_num_threads()}
    if cuda:
        torch.cuda.synchronize()
        result["gpu_after_load_bytes"] = torch.cuda.memory_allocated()
    image = load_image_source(spec["image"], LoadOptions()).image
    task = TASKS["caption"]
    prompt = resolve_prompt("caption", None)

    def messages(img):
        return build_messages(prompt, images=[img], max_pixels=task.max_pixels)

    # Warm-up through the public API, on a small image (64 visual tokens): first-call costs.
    small = image.resize((256, 256))
    session.generate([messages(small)], GenerationSettings(max_new_tokens=2, ignore_eos=True))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    tokens = spec["tokens"]
    runs = {}
    for bs in ([] if spec.get("profile_only") else spec["batch_sizes"]):
        convs = [messages(image)] * bs
        settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True, loop_guard=False)
        t0 = time.perf_counter()
        inputs = session.prepare(convs)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        streamer = _TimingStreamer()
        with torch.inference_mode():
            out = session.model.generate(**inputs, **session._generation_kwargs(settings), streamer=streamer)
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        new = out.shape[1] - inputs["input_ids"].shape[1]
        assert new == tokens, f"generated {new} tokens, expected {tokens}"
        first = streamer.times[0]
        decode_s = streamer.times[-1] - first
        runs[str(bs)] = {
            "batch_size": bs,
            "prompt_tokens": int(inputs["attention_mask"][0].sum()),
            "preprocess_s": t1 - t0,
            "prefill_s": first - t1,  # vision encoder + prompt forward + first token
            "decode_s": decode_s,
            "decode_tok_s": (tokens - 1) * bs / decode_s if decode_s > 0 else None,
            "decode_step_s": decode_s / (tokens - 1) if tokens > 1 else None,
            "generate_s": t2 - t1,
            "total_s": t2 - t0,
            "images_per_s": bs / (t2 - t0),
        }
    result["runs"] = runs
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        result["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        result["gpu_name"] = torch.cuda.get_device_name(0)
    if spec.get("profile"):
        result["profile"] = profile_once(session, messages(image), spec)
    return result


def profile_once(session, msgs, spec) -> dict:
    """Where one request's time goes: per-module wall time (vision tower, language model, lm_head) for
    prefill and each decode step, and a torch.profiler operator table; batch sizes from spec."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from qwenvl.session import GenerationSettings

    model = session.model
    modules = {"vision": model.model.visual, "language_model": model.model.language_model, "lm_head": model.lm_head}
    cuda = spec["device"] == "cuda"
    path = Path(spec["profile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks, summary = [], {}
    for bs in spec.get("profile_batch_sizes") or spec["batch_sizes"]:
        calls: list[tuple[str, int, float]] = []
        starts = {}

        def pre(name):
            def hook(mod, args, kwargs=None):
                if cuda:
                    torch.cuda.synchronize()
                starts[name] = time.perf_counter()
            return hook

        def post(name):
            def hook(mod, args, *rest):
                if cuda:
                    torch.cuda.synchronize()
                hidden = args[0] if args else None
                rows = hidden.shape[-2] if hasattr(hidden, "shape") and hidden.dim() >= 2 else None
                calls.append((name, rows, time.perf_counter() - starts[name]))
            return hook

        handles = []
        for name, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name)))
        settings = GenerationSettings(max_new_tokens=spec["profile_tokens"], ignore_eos=True, loop_guard=False)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        t0 = time.perf_counter()
        try:
            with profile(activities=activities) as prof:
                session.generate([msgs] * bs, settings)
        finally:
            for h in handles:
                h.remove()
        total = time.perf_counter() - t0
        lm_calls = [c for c in calls if c[0] == "language_model"]
        head_calls = [c for c in calls if c[0] == "lm_head"]
        vision = sum(c[2] for c in calls if c[0] == "vision")
        split = {
            "batch_size": bs,
            "new_tokens": spec["profile_tokens"],
            "total_s": total,
            "vision_s": vision,
            # the outer model runs the vision tower before the language model: the two do not overlap
            "prefill_language_model_s": lm_calls[0][2] if lm_calls else None,
            "prefill_lm_head_s": head_calls[0][2] if head_calls else None,
            "decode_step_language_model_s": statistics.mean(c[2] for c in lm_calls[1:]) if len(lm_calls) > 1 else None,
            "decode_step_lm_head_s": statistics.mean(c[2] for c in head_calls[1:]) if len(head_calls) > 1 else None,
        }
        summary[str(bs)] = split
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        chunks.append(f"=== batch size {bs}, {spec['profile_tokens']} new tokens, threads {torch.get_num_threads()} ===\n"
                      f"module split: {json.dumps(split)}\n{table}\n")
    path.write_text("\n".join(chunks))
    return {"file": str(path), "split": summary}


def run_api(checkpoint: Path, device: str, dtype: str, tokens: int, batch_sizes: list[int],
            timeout: float, profile: str | None = None, threads: int | None = None,
            profile_only: bool = False) -> dict:
    spec = {"checkpoint": str(checkpoint), "device": device, "dtype": dtype, "image": str(IMAGE),
            "tokens": tokens, "batch_sizes": batch_sizes, "profile": profile, "profile_tokens": 4,
            "threads": threads, "profile_only": profile_only}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_api", json.dumps(spec)], timeout)
    check_ok(res, f"the Python API run ({dtype})")
    line = [ln for ln in res["stdout"].splitlines() if ln.startswith("{")][-1]
    data = json.loads(line)
    data["process_max_rss_bytes"] = res["max_rss_bytes"]
    data["process_wall_s"] = res["wall_s"]
    return data


# --- the CLI part --------------------------------------------------------------


def cli_features() -> set[str]:
    out = subprocess.run([sys.executable, str(PREDICT), "--help"], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True).stdout
    return {flag for flag in ("--batch", "--batch-size", "--ignore-eos") if flag in out}


def cli_common(args, features) -> list[str]:
    common = ["--model", str(args.checkpoint_dir), "--device", args.device, "--dtype", args.dtype,
              "--max-new-tokens", str(args.max_new_tokens), "--quiet"]
    if "--ignore-eos" in features:
        common.append("--ignore-eos")
    return common


def time_help(repeats: int = 5) -> dict:
    times = []
    for _ in range(repeats):
        res = run_child([sys.executable, str(PREDICT), "--help"], 60)
        check_ok(res, "--help")
        times.append(res["wall_s"])
    return {"median_s": statistics.median(times), "min_s": min(times), "all_s": times}


def run_invocations(args, features, images: list[Path], log) -> dict:
    runs = []
    t0 = time.perf_counter()
    for i, img in enumerate(images, 1):
        cmd = [sys.executable, str(PREDICT), "--image", str(img), "--format", "json"] + cli_common(args, features)
        res = run_child(cmd, args.timeout, gpu=args.device == "cuda")
        check_ok(res, "a CLI invocation")
        record = json.loads(res["stdout"])
        runs.append({"wall_s": res["wall_s"], "max_rss_bytes": res["max_rss_bytes"],
                     "gpu_peak_mb": res["gpu_peak_mb"], "timings": record.get("timings", {}),
                     "usage": record.get("usage", {}), "finish_reason": record.get("finish_reason")})
        log(f"  invocation {i}/{len(images)}: {res['wall_s']:.1f} s, peak RSS {res['max_rss_bytes'] / 2**30:.2f} GiB, "
            f"load {record['timings'].get('load_s')} s, generate {record['timings'].get('generate_s')} s")
    total = time.perf_counter() - t0
    return {"total_s": total, "images_per_s": len(images) / total, "runs": runs}


def run_batch(args, features, images: list[Path], batch_size: int, work: Path, log) -> dict:
    out = work / f"batch-bs{batch_size}.jsonl"
    out.unlink(missing_ok=True)
    cmd = ([sys.executable, str(PREDICT), "--batch", *map(str, images), "--batch-size", str(batch_size),
            "--output", str(out)] + cli_common(args, features))
    res = run_child(cmd, args.timeout, watch_file=out, gpu=args.device == "cuda")
    check_ok(res, f"the --batch run at batch size {batch_size}")
    records = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    if len(records) != len(images):
        sys.exit(f"error: the --batch run wrote {len(records)} records for {len(images)} images")
    bad = [r for r in records if r.get("error")]
    if bad:
        sys.exit(f"error: the --batch run reported errors: {bad[0]['error']}")
    lengths = sorted({(r.get("usage") or {}).get("completion_tokens") for r in records})
    load_s = (records[0].get("timings") or {}).get("load_s")
    log(f"  --batch-size {batch_size}: {res['wall_s']:.1f} s, peak RSS {res['max_rss_bytes'] / 2**30:.2f} GiB, "
        f"load {load_s} s, answer lengths {lengths}")
    return {"total_s": res["wall_s"], "images_per_s": len(images) / res["wall_s"], "first_record_s": res["first_line_s"],
            "max_rss_bytes": res["max_rss_bytes"], "gpu_peak_mb": res["gpu_peak_mb"], "load_s": load_s,
            "completion_tokens": lengths}


# --- the report ------------------------------------------------------------------


def row(key, label, value, unit, target=None, met=None, note=None) -> dict:
    if isinstance(value, float):
        value = round(value, 4)
    return {"key": key, "label": label, "value": value, "unit": unit, "target": target, "met": met, "note": note}


def gib(n):
    return None if n is None else n / 2**30


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def render_table(report: dict) -> str:
    rows = report["rows"]
    lines = []
    s = report["settings"]
    lines.append(cpu_line(report["machine"].get("cpu")))
    lines.append(f"qwenvl benchmark: {s['checkpoint_kind']} checkpoint, device {s['device']}, dtype {s['dtype']}, "
                 f"N={s['n']} images of {s['image_size']}, {s['max_new_tokens']} new tokens each (eos ignored), "
                 f"{report['machine']['cpus']} CPUs, torch threads {report['machine'].get('torch_threads')}")
    w = max(len(r["label"]) for r in rows)
    lines.append(f"{'metric':<{w}}  {'value':>9}  {'unit':<6}  {'target':<8}  met")
    lines.append("-" * (w + 36))
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"{r['label']:<{w}}  {fmt(r['value']):>9}  {r['unit']:<6}  {r['target'] or '':<8}  {met}")
    if report.get("dtypes"):
        lines.append("")
        lines.append(cpu_line(report["machine"].get("cpu")))
        lines.append("dtype comparison (Python API, same process layout; prefill = time to first token, bs = batch size)")
        lines.append(f"{'dtype':<9} {'load s':>7} {'prefill s':>9} {'decode tok/s bs1':>16} {'decode tok/s bs4':>16} "
                     f"{'img/s bs1':>9} {'img/s bs4':>9} {'peak RSS GiB':>12} {'RSS/weights':>11}")
        for name, d in report["dtypes"].items():
            lines.append(f"{name:<9} {fmt(d['load_s']):>7} {fmt(d['prefill_s']):>9} {fmt(d['decode_tok_s_bs1']):>16} "
                         f"{fmt(d.get('decode_tok_s_bs4')):>16} {fmt(d['images_per_s_bs1']):>9} "
                         f"{fmt(d.get('images_per_s_bs4')):>9} {fmt(gib(d['peak_rss_bytes'])):>12} "
                         f"{fmt(d['rss_over_weights']):>11}")
    if not report.get("complete"):
        report.setdefault("notes", []).append("INCOMPLETE run: the parts not reached show n/a")
    if report.get("notes"):
        lines.append("")
        lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)


def dtype_summary(api: dict, weights: int) -> dict:
    r1 = api["runs"].get("1") or next(iter(api["runs"].values()))
    r4 = api["runs"].get("4")
    return {
        "load_s": api["load_s"],
        "prefill_s": r1["prefill_s"],
        "preprocess_s": r1["preprocess_s"],
        "prompt_tokens": r1["prompt_tokens"],
        "decode_tok_s_bs1": r1["decode_tok_s"],
        "decode_tok_s_bs4": r4["decode_tok_s"] if r4 else None,
        "prefill_s_bs4": r4["prefill_s"] if r4 else None,
        "images_per_s_bs1": r1["images_per_s"],
        "images_per_s_bs4": r4["images_per_s"] if r4 else None,
        "peak_rss_bytes": api["process_max_rss_bytes"],
        "rss_over_weights": api["process_max_rss_bytes"] / weights,
        "gpu_peak_bytes": api.get("gpu_peak_bytes"),
        "threads": api.get("threads"),
        "runs": api["runs"],
    }


def cpu_record() -> dict:
    """The CPU as PyTorch sees it (name, capability, native bf16, threads) and any ISA limits in force."""
    sys.path.insert(0, str(ROOT))
    from qwenvl.device import cpu_info

    info = cpu_info()
    info["limits"] = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                 "FBGEMM_ENABLE_INSTRUCTIONS", "MKL_ENABLE_INSTRUCTIONS")
                      if k in os.environ}
    return info


def cpu_line(cpu: dict | None) -> str:
    if not cpu:
        return "CPU: not recorded"
    limits = " (limited by " + " ".join(f"{k}={v}" for k, v in cpu["limits"].items()) + ")" if cpu.get("limits") else ""
    return (f"CPU: {cpu['cpu_name']} ({cpu['architecture']}), capability {cpu['capability']}, "
            f"native bf16 {'yes' if cpu['native_bf16'] else 'no'}, {cpu['threads']} threads{limits}")


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu_record()}
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    from importlib import metadata

    for name in ("torch", "transformers"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if device == "cuda" and shutil.which("nvidia-smi"):
        try:
            info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (subprocess.SubprocessError, OSError, IndexError):
            pass
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="dtype of every CLI and API run (default: %(default)s, the checkpoint's)")
    p.add_argument("--compare-dtypes", default=None, metavar="LIST",
                   help="comma-separated dtypes measured through the Python API besides --dtype "
                        "(default: float32 if --dtype is bfloat16, else bfloat16; 'none' to skip)")
    p.add_argument("--n", type=int, default=None, help="images per throughput run (default: 8; --quick: 2)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="fixed answer length (default: %(default)s)")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help=f"where the random checkpoint is built once and cached (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON report (default: bench/results/benchmark-<device>[-quick].json)")
    p.add_argument("--quick", action="store_true",
                   help="the whole script on a tiny checkpoint, in well under a minute: checks that it works")
    p.add_argument("--skip", default="", metavar="PARTS",
                   help="comma-separated parts to leave out: invocations, batch, api (rows become null)")
    p.add_argument("--profile", action="store_true",
                   help="also write a torch.profiler operator table of one generate per batch size")
    p.add_argument("--profile-only", action="store_true",
                   help="only load through the API and profile one request at batch size 1 and 4 "
                        "(4 new tokens): per-module time of prefill and decode, operator table")
    p.add_argument("--compare-bs4", action="store_true",
                   help="also measure batch size 4 for the --compare-dtypes (default: batch size 1 only)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the API runs (default: torch's)")
    p.add_argument("--timeout", type=float, default=3600, help="per-process limit in seconds (default: %(default)s)")
    p.add_argument("--show", type=Path, metavar="JSON", help="print the table of an earlier report and exit")
    p.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_api", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.show:
        print(render_table(json.loads(args.show.read_text())))
        return 0
    if args._build:
        (build_tiny_checkpoint if args.quick else build_full_checkpoint)(args._build)
        return 0
    if args._api:
        print(json.dumps(api_worker(json.loads(args._api))), flush=True)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if args.profile_only:
        checkpoint, _ = ensure_checkpoint((args.checkpoint_dir or (
            Path(tempfile.gettempdir()) / f"qwenvl-bench-tiny-{os.getuid()}" if args.quick else DEFAULT_CHECKPOINT
        )).expanduser().resolve(), args.quick, log)
        out = args.output or RESULTS / f"profile-{args.device}-{args.dtype}{'-quick' if args.quick else ''}.txt"
        res = run_api(checkpoint, args.device, args.dtype, args.max_new_tokens, [1, 4], args.timeout,
                      profile=str(out), threads=args.threads, profile_only=True)
        for bs, split in res["profile"]["split"].items():
            print(json.dumps(split))
        print(f"operator tables: {out}; peak RSS {res['process_max_rss_bytes'] / 2**30:.2f} GiB")
        return 0

    signal.signal(signal.SIGTERM, on_term)
    t_start = time.perf_counter()
    n = args.n or (2 if args.quick else 8)
    tokens = args.max_new_tokens
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.compare_dtypes is None:
        compare = ["float32"] if args.dtype == "bfloat16" else ["bfloat16"]
    else:
        compare = [d.strip() for d in args.compare_dtypes.split(",") if d.strip() and d.strip() != "none"]
    compare = [d for d in compare if d != args.dtype]
    if args.checkpoint_dir is None:
        args.checkpoint_dir = (Path(tempfile.gettempdir()) / f"qwenvl-bench-tiny-{os.getuid()}") if args.quick \
            else DEFAULT_CHECKPOINT
    args.checkpoint_dir = args.checkpoint_dir.expanduser().resolve()
    output = args.output or RESULTS / f"benchmark-{args.device}{'-quick' if args.quick else ''}.json"

    checkpoint, build_s = ensure_checkpoint(args.checkpoint_dir, args.quick, log)
    weights = weights_bytes(checkpoint)
    info = checkpoint_ready(checkpoint) or {}
    notes: list[str] = []
    features = cli_features()
    missing = {"--batch", "--batch-size", "--ignore-eos"} - features
    if missing:
        notes.append(f"this CLI lacks {', '.join(sorted(missing))}: the rows that need them are n/a")
    batch_ok = "--batch" in features and "--batch-size" in features and "batch" not in skip
    from PIL import Image

    with Image.open(IMAGE) as im:
        image_size = f"{im.width}x{im.height}"

    machine = machine_info(args.device)
    log(f"checkpoint {checkpoint} ({weights / 2**30:.2f} GiB of weights); machine: {machine.get('cpus')} CPUs, "
        f"torch {machine.get('torch')}, {machine.get('gpu') or 'no GPU'}")

    state = {"help_t": None, "inv": None, "batches": {}, "dtypes": {}}

    def save(**parts) -> dict:
        state.update(parts)
        report = build_report(args, argv, state, machine, checkpoint, weights, info, build_s, features, compare,
                              image_size, n, notes, t_start)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, output)
        return report

    work = Path(tempfile.mkdtemp(prefix="qwenvl-bench-"))
    try:
        images = []
        for i in range(n):  # N distinct files of the same image: no input is skipped as a duplicate
            dst = work / f"page{i + 1:02d}.jpg"
            shutil.copyfile(IMAGE, dst)
            images.append(dst)

        log("--help ...")
        help_t = time_help(3 if args.quick else 5)
        save(help_t=help_t)
        dtypes = {}
        if "api" not in skip:
            for i, dt in enumerate([args.dtype] + compare):
                log(f"Python API, {dt}: warm-up, then prefill and decode at batch size 1 and 4 ...")
                prof = str(output.with_name(output.stem + f"-profile-{dt}.txt")) if args.profile else None
                sizes = [1, 4] if dt == args.dtype or args.compare_bs4 else [1]
                api = run_api(checkpoint, args.device, dt, tokens, sizes, args.timeout, profile=prof,
                              threads=args.threads)
                dtypes[dt] = dtype_summary(api, weights)
                d = dtypes[dt]
                log(f"  load {d['load_s']:.1f} s, prefill {d['prefill_s']:.2f} s ({d['prompt_tokens']} prompt tokens), "
                    f"decode {d['decode_tok_s_bs1']:.2f} tok/s at bs1, {fmt(d['decode_tok_s_bs4'])} tok/s at bs4, "
                    f"peak RSS {d['peak_rss_bytes'] / 2**30:.2f} GiB")
                save(dtypes=dtypes)
                if prof:
                    notes.append(f"profile ({dt}): {prof}")
        if "invocations" not in skip:
            log(f"{n} separate CLI invocations ...")
            save(inv=run_invocations(args, features, images, log))
        batches = {}
        if batch_ok:
            for bs in (1, 4):
                log(f"one --batch run of {n} images at batch size {bs} ...")
                batches[bs] = run_batch(args, features, images, bs, work, log)
                save(batches=batches)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = save(complete=True)
    print(render_table(report))
    print(f"\nwritten to {output} ({report['elapsed_s']:.0f} s in all)")
    return 0


def build_report(args, argv, state, machine, checkpoint, weights, info, build_s, features, compare,
                 image_size, n, notes, t_start) -> dict:
    help_t, inv, batches, dtypes = state["help_t"], state["inv"], state["batches"], state["dtypes"]
    tokens = args.max_new_tokens
    machine = dict(machine)
    if dtypes:
        machine["torch_threads"] = next(iter(dtypes.values())).get("threads")
    # --- rows --------------------------------------------------------------------
    def inv_median(fn):
        if not inv:
            return None
        vals = [fn(r) for r in inv["runs"] if fn(r) is not None]
        return statistics.median(vals) if vals else None

    main_api = dtypes.get(args.dtype)
    rows = [
        row("help_s", f"--help wall time (median of {len(help_t['all_s'])})", help_t["median_s"], "s",
            f"< {TARGET_HELP_S}", help_t["median_s"] < TARGET_HELP_S) if help_t else
        row("help_s", "--help wall time", None, "s", f"< {TARGET_HELP_S}"),
        row("first_result_s", "process start to first result (1 invocation, median)",
            inv_median(lambda r: r["wall_s"]), "s"),
        row("cli_load_s", "model load time (CLI timings.load_s, median)",
            inv_median(lambda r: r["timings"].get("load_s")), "s"),
        row("api_load_s", "model load time (ModelSession, API)", main_api and main_api["load_s"], "s"),
        row("prefill_s", "prefill: time to first token (API, after warm-up)", main_api and main_api["prefill_s"], "s"),
        row("prompt_tokens", "prompt tokens per request", main_api and main_api["prompt_tokens"], "tok"),
        row("decode_tok_s", f"decode speed, batch size 1 ({tokens} tokens)", main_api and main_api["decode_tok_s_bs1"],
            "tok/s"),
        row("decode_tok_s_bs4", "decode speed, batch size 4 (all rows)", main_api and main_api["decode_tok_s_bs4"],
            "tok/s"),
        row("weights_gib", "weights on disk (safetensors)", gib(weights), "GiB"),
    ]
    peak_cli = max((r["max_rss_bytes"] for r in inv["runs"]), default=None) if inv else None
    ratio_rss = peak_cli / weights if peak_cli else None
    rows.append(row("peak_rss_cli_gib", "peak RSS, one CLI invocation", gib(peak_cli), "GiB"))
    rows.append(row("rss_over_weights", "peak RSS / weights size (1 invocation)", ratio_rss, "x",
                    f"<= {TARGET_RSS_OVER_WEIGHTS}", None if ratio_rss is None else ratio_rss <= TARGET_RSS_OVER_WEIGHTS))
    b1, b4 = batches.get(1), batches.get(4)
    rss_b4 = b4["max_rss_bytes"] / weights if b4 else None
    rows.append(row("peak_rss_batch4_gib", "peak RSS, --batch run at batch size 4", gib(b4 and b4["max_rss_bytes"]), "GiB"))
    rows.append(row("rss_over_weights_batch4", "peak RSS / weights size (--batch-size 4)", rss_b4, "x"))
    rows.append(row("invocations_img_s", f"images/s, {n} separate invocations", inv and inv["images_per_s"], "img/s"))
    rows.append(row("batch1_img_s", f"images/s, one --batch run, batch size 1", b1 and b1["images_per_s"], "img/s"))
    rows.append(row("batch4_img_s", f"images/s, one --batch run, batch size 4", b4 and b4["images_per_s"], "img/s"))
    rows.append(row("invocations_total_s", f"wall time, {n} invocations", inv and inv["total_s"], "s"))
    rows.append(row("batch1_total_s", "wall time, --batch at batch size 1", b1 and b1["total_s"], "s"))
    rows.append(row("batch4_total_s", "wall time, --batch at batch size 4", b4 and b4["total_s"], "s"))
    rows.append(row("batch_first_record_s", "--batch (bs 1): process start to first record", b1 and b1["first_record_s"], "s"))
    sp1 = inv["total_s"] / b1["total_s"] if inv and b1 else None
    sp4 = inv["total_s"] / b4["total_s"] if inv and b4 else None
    best = max((x for x in (sp1, sp4) if x is not None), default=None)
    rows.append(row("speedup_batch1", "speedup: --batch bs 1 vs invocations", sp1, "x"))
    rows.append(row("speedup_batch4", "speedup: --batch bs 4 vs invocations", sp4, "x"))
    rows.append(row("speedup_batch", "speedup: best --batch run vs invocations", best, "x", f">= {TARGET_BATCH_SPEEDUP:g}",
                    None if best is None else best >= TARGET_BATCH_SPEEDUP))
    r41 = b4["images_per_s"] / b1["images_per_s"] if b1 and b4 else None
    rows.append(row("bs4_over_bs1", "throughput: batch size 4 / batch size 1 (CLI)", r41, "x",
                    f">= {TARGET_BS4_OVER_BS1:g}", None if r41 is None else r41 >= TARGET_BS4_OVER_BS1))
    if main_api and main_api.get("images_per_s_bs4"):
        rows.append(row("api_bs4_over_bs1", "throughput: batch size 4 / 1 (API, excl. load)",
                        main_api["images_per_s_bs4"] / main_api["images_per_s_bs1"], "x"))
    if args.device == "cuda":
        rows.append(row("gpu_peak_api_gib", "peak GPU memory allocated (API, bs 1 and 4)",
                        gib(main_api and main_api.get("gpu_peak_bytes")), "GiB"))
        gpu_cli = max((r["gpu_peak_mb"] or 0 for r in inv["runs"]), default=0) if inv else 0
        rows.append(row("gpu_peak_cli_gib", "peak GPU memory of one CLI process (nvidia-smi)",
                        gpu_cli / 1024 if gpu_cli else None, "GiB"))
        rows.append(row("gpu_peak_batch4_gib", "peak GPU memory, --batch-size 4 (nvidia-smi)",
                        b4["gpu_peak_mb"] / 1024 if b4 and b4.get("gpu_peak_mb") else None, "GiB"))
    for dt, d in dtypes.items():
        if dt == args.dtype or not main_api:
            continue
        rows.append(row(f"{dt}_prefill_ratio", f"prefill time {dt} / {args.dtype}", d["prefill_s"] / main_api["prefill_s"], "x"))
        rows.append(row(f"{dt}_decode_ratio", f"decode tok/s {dt} / {args.dtype}",
                        d["decode_tok_s_bs1"] / main_api["decode_tok_s_bs1"], "x"))
        rows.append(row(f"{dt}_rss_ratio", f"peak RSS {dt} / {args.dtype}", d["peak_rss_bytes"] / main_api["peak_rss_bytes"], "x"))

    command = "python bench/benchmark.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    report = {
        "benchmark": "qwenvl bench/benchmark.py",
        "command": command.strip(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine,
        "settings": {
            "device": args.device, "dtype": args.dtype, "n": n, "max_new_tokens": tokens,
            "image": str(IMAGE.relative_to(ROOT)), "image_size": image_size,
            "checkpoint": str(checkpoint), "checkpoint_kind": "tiny" if args.quick else "Qwen3-VL-2B architecture, random",
            "parameters": info.get("parameters"), "weights_bytes": weights, "checkpoint_build_s": build_s,
            "cli_features": sorted(features), "compare_dtypes": compare,
        },
        "rows": rows,
        "dtypes": dtypes,
        "detail": {"help": help_t, "invocations": inv, "batches": {str(k): v for k, v in batches.items()}},
        "complete": bool(state.get("complete")),
        "notes": notes,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    return report


if __name__ == "__main__":
    sys.exit(main())
