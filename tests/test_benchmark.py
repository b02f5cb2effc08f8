"""bench/benchmark.py --quick: the whole benchmark on the tiny checkpoint, in a subprocess.

It checks that the script runs end to end and that every row of the table
(and of its JSON) holds a number; the figures themselves mean nothing on a
tiny model. About 45 s on an idle 2-core machine (8 short processes), longer
when the machine is oversubscribed. The full-size run is `python bench/benchmark.py` (minutes).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = {
    "help_s", "first_result_s", "cli_load_s", "api_load_s", "prefill_s", "prompt_tokens", "decode_tok_s",
    "decode_tok_s_bs4", "weights_gib", "peak_rss_cli_gib", "rss_over_weights", "peak_rss_batch4_gib",
    "invocations_img_s", "batch1_img_s", "batch4_img_s", "speedup_batch", "bs4_over_bs1",
    "float32_prefill_ratio", "float32_decode_ratio", "float32_rss_ratio",
}


@pytest.mark.slow
def test_benchmark_quick_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "benchmark.py"), "--quick", "--output", str(out),
         "--checkpoint-dir", str(tmp_path / "tiny")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,  # ~45 s on an idle 2-core machine
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert EXPECTED_ROWS <= rows.keys(), EXPECTED_ROWS - rows.keys()
    for key, r in rows.items():
        value = r["value"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value >= 0, (key, value)
        assert r["label"] in proc.stdout, r["label"]  # the table shows every row
    # Each run generated the fixed answer length, so runs are comparable.
    assert report["detail"]["batches"]["1"]["completion_tokens"] == [report["settings"]["max_new_tokens"]]
    assert report["detail"]["batches"]["4"]["completion_tokens"] == [report["settings"]["max_new_tokens"]]
    assert all(r["usage"]["completion_tokens"] == report["settings"]["max_new_tokens"]
               for r in report["detail"]["invocations"]["runs"])
    assert set(report["dtypes"]) == {"bfloat16", "float32"}
    assert "dtype comparison" in proc.stdout
    _assert_cpu_recorded(report["machine"]["cpu"], proc.stdout, tables=2)


def _assert_cpu_recorded(cpu: dict, stdout: str, tables: int) -> None:
    """The CPU the figures come from: in the JSON, and printed above every table."""
    import torch

    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(cpu["native_bf16"], bool) and cpu["threads"] >= 1 and cpu["cpu_name"]
    line = f"capability {cpu['capability']}, native bf16 {'yes' if cpu['native_bf16'] else 'no'}"
    assert stdout.count(line) >= tables, stdout[:2000]


@pytest.mark.slow
def test_speed_script_measures_every_path_on_the_tiny_checkpoint(tiny_model, tmp_path):
    """bench/speed.py end to end (4 short processes): every variant measured, ratios and checks computed."""
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--checkpoint", tiny_model, "--runs", "1",
         "--tokens", "3", "--agree-steps", "3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"stock", "bf16", "int8", "int8-cached"}
    for name, r in report["results"].items():
        for key in ("import_s", "load_s", "ready_s", "prefill_s", "decode_tok_s", "peak_rss_gb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, (name, key)
        assert (r["int8_linears"] > 0) == name.startswith("int8"), name
        if name != "stock":
            a = r["agreement"]
            assert a["steps"] == 3 and 0 <= a["greedy_agreement"] <= 1 and a["rel_logit_error_prompt"] >= 0
    # the cached run maps the file the int8 run wrote: same weights, same logits
    assert report["results"]["int8-cached"]["agreement"]["rel_logit_error_mean"] == \
        report["results"]["int8"]["agreement"]["rel_logit_error_mean"]
    for key in ("load_over_read", "ready_over_read", "int8_decode_over_bf16", "int8_prefill_over_bf16",
                "int8_cached_load_over_read"):
        assert math.isfinite(report["ratios"][key]) and report["ratios"][key] > 0, key
    assert set(report["checks"]) == {"bf16_decode_tok_s", "bf16_prefill_s", "load_over_read",
                                     "int8_decode_over_bf16", "int8_prefill_over_bf16", "int8_peak_rss_gb"}
    assert "int8-cached" in proc.stdout and "agreement with stock bfloat16" in proc.stdout
    _assert_cpu_recorded(report["cpu"], proc.stdout, tables=1)


@pytest.mark.slow
def test_speed_script_times_whole_cli_requests(tiny_model, tmp_path):
    """bench/speed.py --requests: the CLI request per path, its timings, decode speed, peak RSS, the dtype auto
    line; with --repeat, every path in each round (int8's first run quantizes afresh) and the median run kept."""
    out = tmp_path / "requests.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--requests", "--paths", "float32,auto,int8,int8-cached",
         "--repeat", "2", "--checkpoint", tiny_model, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["requests"]["results"]
    assert set(results) == {"float32", "auto", "int8", "int8-cached"}
    assert results["float32"]["dtype"] == "float32" and results["int8-cached"]["quantize"] == "int8"
    for name, r in results.items():
        assert r["completion_tokens"] == 16 and r["prompt_tokens"] > 0, name
        for key in ("process_s", "load_s", "generate_s", "prefill_s", "decode_tok_s", "peak_rss_gb", "cpu_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (name, key)
        runs = r["process_s_runs"]
        assert len(runs) == 2 and round(r["process_s"], 2) == min(runs), name  # the lower middle of two
        assert len(r["peak_rss_gb_runs"]) == 2, name
    assert proc.stderr.count("request int8 ...") == 2 and proc.stderr.count("round 2 of 2") == 1
    assert any(n.startswith("dtype auto: ") for n in results["auto"]["notes"])
    assert any(n.startswith("int8: quantized ") for n in results["int8"]["notes"])  # no cache left from round 1
    assert any(n.startswith("int8: weights from ") for n in results["int8-cached"]["notes"])
    for key in ("auto_over_fastest_dtype", "int8_cached_over_float32_total", "int8_cached_decode_over_float32"):
        assert math.isfinite(report["requests"]["ratios"][key]) and report["requests"]["ratios"][key] > 0, key
    assert report["requests"]["ratios"]["int8_cached_peak_rss_gb"] == max(results["int8-cached"]["peak_rss_gb_runs"])
    _assert_cpu_recorded(report["cpu"], proc.stdout, tables=1)
