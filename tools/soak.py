#!/usr/bin/env python3
"""Memory over a long batch: peak RSS of one --batch run over N small images, for several N.

    python tools/soak.py [--counts 100 1000] [--model DIR]

Builds the tiny checkpoint unless --model is given; prints a table (stdout) and
exits 1 if the peak at the largest N exceeds the peak at the smallest by more
than 10%.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (64 + i % 32, 64), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)).save(
            folder / f"img{i:05d}.png")


def run(model: str, folder: Path, out: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--batch", str(folder), "--model", model,
                             "--max-new-tokens", "4", "--output", str(out), "--quiet"], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the batch run failed with {os.waitstatus_to_exitcode(status)}")
    records = sum(1 for _ in out.open())
    return usage.ru_maxrss / 1024, time.perf_counter() - start, records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--model")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tools"))
            import make_tiny_model

            model = str(make_tiny_model.build(tmp / "model"))
        rows = []
        for count in args.counts:
            make_images(tmp / f"n{count}", count)
            peak, seconds, records = run(model, tmp / f"n{count}", tmp / f"n{count}.jsonl")
            rows.append({"images": count, "records": records, "peak_rss_mb": round(peak, 1),
                         "seconds": round(seconds, 1)})
            print(f"{count:>6} images  {records:>6} records  peak RSS {peak:8.1f} MB  {seconds:7.1f} s", flush=True)
        growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(json.dumps({"rows": rows, "peak_growth": round(growth, 3)}))
        return 0 if growth <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
