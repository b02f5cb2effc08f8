"""Faults: failed writes leave no half-written output, out-of-memory on one request spares the batch."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import media_factory

ROOT = Path(__file__).resolve().parent.parent


def _limited(max_bytes: int):
    def setup():  # a file-size limit stands in for a full disk; EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return setup


def _predict(args, limit=None, **kw):
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, preexec_fn=_limited(limit) if limit else None, **kw)


def test_full_disk_single_output_leaves_nothing(tiny_model, media, tmp_path):
    out = tmp_path / "out" / "result.json"
    r = _predict(["--image", media["jpeg"], "--model", tiny_model, "--max-new-tokens", "4", "--output", out,
                  "--quiet"], limit=200)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"error: {out}: cannot write (File too large)"
    assert os.listdir(out.parent) == []  # neither the result nor a temporary file


def test_full_disk_keeps_the_old_file(tiny_model, media, tmp_path):
    out = tmp_path / "result.json"
    out.write_text("previous result\n")
    r = _predict(["--image", media["jpeg"], "--model", tiny_model, "--max-new-tokens", "4", "--output", out,
                  "-q"], limit=200)
    assert r.returncode == 1
    assert out.read_text() == "previous result\n"
    assert sorted(os.listdir(tmp_path)) == ["result.json"]


def test_dev_full(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--output", "/dev/full")
    assert r.code == 1
    assert r.err.strip().splitlines()[-1] == "error: /dev/full: cannot write (No space left on device)"
    assert Path("/dev/full").is_char_device()  # written to, never replaced


def test_output_parent_is_a_file(run_tiny, media, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_tiny("--image", media["jpeg"], "--output", blocker / "r.json")
    assert r.code == 1
    assert r.err.strip().splitlines()[-1].startswith(f"error: {blocker / 'r.json'}: cannot create the folder")


def test_full_disk_in_batch_keeps_whole_records(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        media_factory.jpeg(folder / f"{i:02d}.jpg", size=(64, 64))
    out = tmp_path / "r.jsonl"
    r = _predict(["--batch", folder, "--model", tiny_model, "--max-new-tokens", "4", "--output", out, "-q"],
                 limit=4000)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"error: {out}: cannot write (File too large)"
    text = out.read_text()
    assert text.endswith("\n") and 1 <= text.count("\n") < 12
    records = [json.loads(line) for line in text.splitlines()]  # no torn line
    resumed = _predict(["--batch", folder, "--model", tiny_model, "--max-new-tokens", "4", "--output", out,
                        "--resume", "-q"])
    assert resumed.returncode == 0, resumed.stderr
    assert len(out.read_text().splitlines()) == 12 and len(records) < 12


def test_out_of_memory_on_one_request(cli, tiny_model, tmp_path, monkeypatch):
    """The real model, with an out-of-memory fault injected for inputs above a size."""
    import torch

    import qwenvl.accel as accel

    real_load = accel.load_model

    def load_with_fault(*args, **kwargs):
        model = real_load(*args, **kwargs)
        real_generate = model.generate

        def generate(**inputs):
            if int(inputs["image_grid_thw"][:, 1:].prod(dim=1).max()) > 2000:  # the big image (patches)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real_generate(**inputs)

        model.generate = generate
        return model

    monkeypatch.setattr(accel, "load_model", load_with_fault)
    folder = tmp_path / "imgs"
    folder.mkdir()
    media_factory.jpeg(folder / "a_small.jpg", size=(128, 128))
    media_factory.jpeg(folder / "b_big.jpg", size=(1024, 1024))
    media_factory.jpeg(folder / "c_small.jpg", size=(96, 128))
    r = cli("--batch", folder, "--model", tiny_model, "--max-new-tokens", "4", "--batch-size", "3")
    assert r.code == 1
    recs = {Path(x["key"]).name: x for x in map(json.loads, r.out.splitlines())}
    assert recs["b_big.jpg"]["error"]["type"] == "generation_error"
    assert "out of memory" in recs["b_big.jpg"]["error"]["message"]
    assert recs["a_small.jpg"]["error"] is None and recs["c_small.jpg"]["error"] is None
    assert recs["a_small.jpg"]["text"]
