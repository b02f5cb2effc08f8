"""Batch mode on the tiny checkpoint: expansion, JSON Lines, --output-dir, --resume, batching."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media_factory

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tree(tmp_path):
    """scans/a.jpg, scans/sub/a.jpg (same base name), scans/doc.pdf (2 pages), scans/bad.png, notes.txt."""
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    media_factory.jpeg(scans / "a.jpg", color=(250, 0, 0))
    media_factory.jpeg(scans / "sub" / "a.jpg", color=(0, 0, 250), size=(200, 300))
    media_factory.pdf(scans / "doc.pdf", pages=2)
    (scans / "bad.png").write_text("not really a png")
    (scans / "notes.txt").write_text("ignored: not an image")
    return scans


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_folder_to_jsonl_stdout(run_tiny, tree):
    r = run_tiny("--batch", tree, "--dpi", "72")
    assert r.code == 1, r  # one input is bad
    recs = lines(r.out)
    keys = [rec["key"] for rec in recs]
    assert sorted(keys) == sorted([f"{tree}/a.jpg", f"{tree}/bad.png", f"{tree}/doc.pdf#page=1",
                                   f"{tree}/doc.pdf#page=2", f"{tree}/sub/a.jpg"])
    by_key = {rec["key"]: rec for rec in recs}
    bad = by_key[f"{tree}/bad.png"]
    assert bad["error"]["type"] == "input_error" and "not a recognised image" in bad["error"]["message"]
    assert bad["text"] == "" and bad["finish_reason"] is None
    good = by_key[f"{tree}/sub/a.jpg"]
    assert good["error"] is None and good["text"] and good["finish_reason"] == "length"
    assert good["inputs"][0]["width"] == 200 and good["source"] == f"{tree}/sub/a.jpg"
    assert by_key[f"{tree}/doc.pdf#page=2"]["page"] == 2
    assert f"error: {tree}/bad.png: not a recognised image" in r.err
    assert "4 done, 1 failed" in r.err
    assert "%|" not in r.err and "it/s" not in r.err  # no progress bar when stderr is not a terminal


def test_batch_matches_single_runs(run_tiny, tree):
    single = run_tiny("--image", tree / "sub" / "a.jpg").out.strip()
    recs = lines(run_tiny("--batch", tree / "sub" / "a.jpg").out)
    assert recs[0]["text"] == single


@pytest.mark.parametrize("size", [2, 3])
def test_batch_size_gives_identical_greedy_results(run_tiny, tree, size):
    base = {r["key"]: r["text"] for r in lines(run_tiny("--batch", tree, "--dtype", "float32", tokens=12).out)}
    big = lines(run_tiny("--batch", tree, "--dtype", "float32", "--batch-size", size, tokens=12).out)
    assert {r["key"]: r["text"] for r in big} == base
    assert any(r["timings"].get("batch_size") == size for r in big if r["error"] is None)


def test_glob_list_and_urls(run_tiny, tree, tmp_path, http_server):
    http_server.routes["/img.png"] = (200, {"Content-Type": "image/png"}, media_factory.image_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my inputs\nscans/a.jpg\n\n{http_server.url}/img.png\n{http_server.url}/gone.png\n")
    r = run_tiny("--batch", f"{tree}/**/*.jpg", f"@{listing}")
    recs = lines(r.out)
    keys = [x["key"] for x in recs]
    # scans/a.jpg from the list is the same file as the glob's: one request
    assert keys.count(f"{tree}/a.jpg") == 1
    assert f"{http_server.url}/img.png" in keys and f"{tree}/sub/a.jpg" in keys
    gone = [x for x in recs if x["key"].endswith("gone.png")][0]
    assert gone["error"]["message"].endswith("HTTP 404 Not Found")
    assert r.code == 1


def test_unmatched_glob_and_missing_list(run_tiny, tmp_path):
    r = run_tiny("--batch", str(tmp_path / "*.jpg"), "@" + str(tmp_path / "none.txt"))
    recs = lines(r.out)
    assert [x["error"]["message"] for x in recs] == [
        f"{tmp_path}/*.jpg: no files match this pattern",
        f"@{tmp_path}/none.txt: no such list file",
    ]
    assert r.code == 1


def test_list_from_stdin(run_tiny, tree):
    r = run_tiny("--batch", "@-", stdin=f"{tree}/a.jpg\n{tree}/sub/a.jpg\n".encode())
    assert r.code == 0, r
    assert [x["key"] for x in lines(r.out)] == [f"{tree}/a.jpg", f"{tree}/sub/a.jpg"]


def test_output_dir_names_never_collide(run_tiny, tree, tmp_path):
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    media_factory.jpeg(other / "a.jpg")
    r = run_tiny("--batch", tree, other / "a.jpg", "--output-dir", out, "--format", "txt", "--dpi", "72")
    assert r.code == 1
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["a.jpg.txt", "a.jpg~2.txt", "doc.pdf.p1.txt", "doc.pdf.p2.txt", "sub/a.jpg.txt"]
    assert (out / "sub" / "a.jpg.txt").read_text().strip()


def test_output_dir_json_and_names_stay_inside(run_tiny, tmp_path, http_server):
    http_server.routes["/x/..%2F..%2Fevil.png"] = (200, {"Content-Type": "image/png"}, media_factory.image_bytes())
    http_server.routes["/x/..%2F..%2Fevil.png".split("?")[0]] = http_server.routes["/x/..%2F..%2Fevil.png"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{http_server.url}/x/..%2F..%2Fevil.png\n")
    out = tmp_path / "deep" / "out"
    r = run_tiny("--batch", f"@{listing}", "--output-dir", out)
    assert r.code == 0, r
    made = [p for p in tmp_path.rglob("*") if p.is_file() and p != listing]
    assert made and all(out in p.parents for p in made), made
    rec = json.loads(made[0].read_text())
    assert rec["error"] is None and rec["source"].endswith("evil.png")


def test_safe_relpath():
    from qwenvl.sinks import safe_relpath

    assert safe_relpath("../../etc/passwd") == "etc/passwd"
    assert safe_relpath("/abs/path/x.jpg") == "abs/path/x.jpg"
    assert safe_relpath("a/./b/../c.png") == "a/b/c.png"
    assert safe_relpath("..") == "input"
    assert safe_relpath(".hidden") == "hidden"
    assert safe_relpath("we ird:na*me.png") == "we_ird_na_me.png"


def test_resume_skips_done_and_retries_failed(run_tiny, tree, tmp_path):
    out = tmp_path / "r.jsonl"
    first = run_tiny("--batch", tree, "--output", out, "--dpi", "72")
    assert first.code == 1 and first.out == ""
    recs = lines(out.read_text())
    assert len(recs) == 5
    (tree / "bad.png").unlink()
    media_factory.jpeg(tree / "bad.png")  # now a good image
    second = run_tiny("--batch", tree, "--output", out, "--resume", "--dpi", "72")
    assert second.code == 0, second
    assert "1 done, 0 failed, 4 already done (--resume)" in second.err
    recs = lines(out.read_text())
    ok = [r["key"] for r in recs if r["error"] is None]
    assert sorted(ok) == sorted({r["key"] for r in recs})  # every key now has a good record
    assert len(ok) == 5


def test_resume_cuts_a_torn_last_line(run_tiny, tree, tmp_path):
    out = tmp_path / "r.jsonl"
    run_tiny("--batch", tree / "a.jpg", "--output", out)
    good = out.read_text()
    out.write_text(good + '{"key": "half a rec')
    r = run_tiny("--batch", tree / "a.jpg", tree / "sub" / "a.jpg", "--output", out, "--resume")
    assert r.code == 0, r
    recs = lines(out.read_text())  # every line parses
    assert [x["key"] for x in recs] == [f"{tree}/a.jpg", f"{tree}/sub/a.jpg"]


def test_batch_usage_errors(cli, tmp_path):
    cases = [
        (["--batch", "a.jpg", "--image", "b.jpg"], "--batch cannot be combined with --image"),
        (["--batch", "a.jpg", "--format", "txt"], "batch results are JSON Lines"),
        (["--batch", "a.jpg", "--resume"], "--resume needs --output"),
        (["--image", "a.jpg", "--batch-size", "4"], "--batch-size needs --batch"),
        (["--batch", "a", "--output", "x.jsonl", "--output-dir", "d"], "not both"),
        (["--batch", "a", "--output-dir", "d", "--format", "jsonl"], "use --format txt or json"),
    ]
    for argv, expected in cases:
        r = cli(*argv, "--model", str(tmp_path / "none"))
        assert r.code == 2 and expected in r.err, (argv, r)


def _spawn_batch(model, sources, out, extra=()):
    # SIGINT as at a terminal: a suite started in the background (`pytest &` without job control)
    # hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen(
        [sys.executable, str(ROOT / "predict.py"), "--batch", *map(str, sources), "--output", str(out),
         "--model", model, "--max-new-tokens", "4", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_results_and_resume_completes(tiny_model, tmp_path, sig):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        media_factory.jpeg(folder / f"img{i:03d}.jpg", size=(64 + i, 64))
    out = tmp_path / "r.jsonl"
    proc = _spawn_batch(tiny_model, [folder], out)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until some records are written
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "rerun with --resume" in err and "Traceback" not in err
    partial = lines(out.read_text())  # valid JSON Lines
    assert 3 <= len(partial) < 30
    resumed = _spawn_batch(tiny_model, [folder], out, ["--resume"])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    recs = lines(out.read_text())
    assert sorted(r["key"] for r in recs) == sorted(str(p) for p in folder.iterdir())
    # the union equals an uninterrupted run
    full_out = tmp_path / "full.jsonl"
    full = _spawn_batch(tiny_model, [folder], full_out)
    full.communicate(timeout=600)
    assert {r["key"]: r["text"] for r in recs} == {r["key"]: r["text"] for r in lines(full_out.read_text())}


def test_progress_bar_on_a_terminal(tiny_model, tree, tmp_path):
    import pty

    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "predict.py"), "--batch", str(tree / "sub"), str(tree / "a.jpg"),
         "--output", str(out), "--model", tiny_model, "--max-new-tokens", "4"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0
    text = seen.decode("utf-8", "replace")
    assert "batch: 100%" in text and "2/2" in text and "img/s" in text
    assert proc.stdout.read() == b""  # the bar never touches stdout
