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
