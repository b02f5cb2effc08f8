"""Grounding, schema extraction, streaming, chat and the loop guard, on tiny checkpoints."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import media_factory
from qwenvl.session import LOOP_MIN_SPAN, detect_loop
from qwenvl.structured import ParseError, parse_json_answer, to_pixels, validate

ROOT = Path(__file__).resolve().parent.parent
BOX_ANSWER = '```json\n[{"bbox_2d": [100, 200, 500, 600], "label": "total"}, {"point_2d": [1200, -5], "label": "dot"}]\n```'
INVOICE = {"invoice_number": "INV-2024-0042", "date": "2024-03-15", "total": 404.98,
           "line_items": [{"description": "Shipping", "amount": 12.0}]}


# --- grounding ----------------------------------------------------------------


def test_ground_pixels_on_the_original_image(cli, scripted_model, tmp_path):
    image = media_factory.jpeg(tmp_path / "doc.jpg", size=(800, 600))
    r = cli("--image", image, "--task", "ground", "--prompt", "the total amount", "--model",
            scripted_model(BOX_ANSWER), "--format", "json")
    assert r.code == 0, r
    rec = r.json
    assert rec["objects"] == [{"label": "total", "bbox": [80, 120, 400, 360]},
                              {"label": "dot", "point": [800, 0]}]  # clamped to the image
    assert "the total amount" in rec["prompt"] and rec["text"] == BOX_ANSWER
    txt = cli("--image", image, "--task", "ground", "--prompt", "total", "--model", scripted_model(BOX_ANSWER))
    assert json.loads(txt.out) == rec["objects"]


def test_ground_uses_exif_upright_size_and_annotates(cli, scripted_model, media, tmp_path):
    out = tmp_path / "boxes" / "annotated.png"
    r = cli("--image", media["exif"], "--task", "ground", "--prompt", "total", "--model",
            scripted_model(BOX_ANSWER), "--annotate", out, "--format", "json")
    assert r.code == 0, r
    # shown 100x300 (EXIF orientation 6 applied), not the stored 300x100
    assert r.json["objects"][0]["bbox"] == [10, 60, 50, 180]
    drawn = Image.open(out)
    assert drawn.size == (100, 300)
    assert drawn.convert("RGB").getpixel((10, 120)) != (0, 120, 255)  # a box edge was drawn there
    assert r.json["annotated"] == str(out)


def test_ground_unparseable_answer(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--task", "ground", "--prompt", "cat", "--format", "json")
    assert r.code == 1
    rec = r.json
    assert rec["error"]["type"] == "parse_error" and rec["text"]  # the raw answer is kept
    assert rec.get("objects") is None
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {media['jpeg']}: the answer is not valid JSON")
    txt = run_tiny("--image", media["jpeg"], "--task", "ground", "--prompt", "cat", "--quiet")
    assert txt.code == 1 and txt.out == "" and len(txt.err.strip().splitlines()) == 1


def test_parse_json_answer_forms():
    assert parse_json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_answer('Here you go: [1, 2] hope it helps') == [1, 2]
    assert parse_json_answer('```\n[{"x": "y"}]\n```\ntrailing') == [{"x": "y"}]
    with pytest.raises(ParseError):
        parse_json_answer("no json here")
    with pytest.raises(ParseError):
        to_pixels('[{"bbox_2d": [1, 2, 3]}]', 100, 100)
    assert to_pixels('{"bbox_2d": [500, 0, 0, 1000], "label": "x"}', 200, 100) == [
        {"label": "x", "bbox": [0, 0, 100, 100]}]  # corners sorted


# --- extraction -------------------------------------------------------------------


def test_extract_valid_on_the_sample_invoice(cli, scripted_model):
    answer = "```json\n" + json.dumps(INVOICE) + "\n```"
    r = cli("--image", ROOT / "test_images" / "sample.jpg", "--task", "extract", "--schema",
            ROOT / "schemas" / "invoice.schema.json", "--model", scripted_model(answer), "--format", "json")
    assert r.code == 0, r
    assert r.json["data"] == INVOICE and r.json["attempts"] == 1 and r.json["error"] is None
    assert '"invoice_number"' in r.json["prompt"]  # the schema is in the prompt
    txt = cli("--image", ROOT / "test_images" / "sample.jpg", "--task", "extract", "--schema",
              ROOT / "schemas" / "invoice.schema.json", "--model", scripted_model(answer))
    assert json.loads(txt.out) == INVOICE


def test_extract_retries_then_fails_with_last_answer(cli, scripted_model, media):
    bad = json.dumps({"invoice_number": 42})
    r = cli("--image", media["jpeg"], "--task", "extract", "--schema", ROOT / "schemas" / "invoice.schema.json",
            "--retries", "2", "--model", scripted_model(bad), "--format", "json")
    assert r.code == 1
    rec = r.json
    assert rec["attempts"] == 3 and rec["text"] == bad and rec.get("data") is None
    assert rec["error"]["type"] == "parse_error"
    assert "after 3 attempts" in rec["error"]["message"] and "total" in rec["error"]["message"]
    once = cli("--image", media["jpeg"], "--task", "extract", "--schema", ROOT / "schemas" / "invoice.schema.json",
               "--retries", "0", "--model", scripted_model(bad), "--format", "json").json
    # retries carry the earlier answers and the validation error: the prompts grow
    assert rec["usage"]["prompt_tokens"] > 3 * once["usage"]["prompt_tokens"]


def test_extract_schema_errors(cli, media, tmp_path):
    bad_schema = tmp_path / "s.json"
    bad_schema.write_text('{"type": "nonsense"}')
    r = cli("--image", media["jpeg"], "--task", "extract", "--schema", bad_schema, "--model", str(tmp_path / "x"))
    assert r.code == 1 and r.err.strip().startswith(f"error: {bad_schema}: not a valid JSON Schema")
    r = cli("--image", media["jpeg"], "--task", "extract", "--model", str(tmp_path / "x"))
    assert r.code == 2 and "--schema FILE" in r.err


def test_validate_reports_the_path():
    schema = json.loads((ROOT / "schemas" / "invoice.schema.json").read_text())
    with pytest.raises(ParseError, match="line_items/0"):
        validate(json.dumps({"invoice_number": "1", "total": 1, "line_items": [{"amount": 1}]}), schema)


# --- streaming ----------------------------------------------------------------------


def test_stream_matches_plain_output(run_tiny, media, monkeypatch):
    import qwenvl.outputs as outputs  # the streamer (outputs.StdoutStream) writes through outputs.write_stdout

    plain = run_tiny("--image", media["jpeg"], tokens=12)
    chunks = []
    real = outputs.write_stdout
    monkeypatch.setattr(outputs, "write_stdout", lambda text, stream: (chunks.append(text), real(text, stream)))
    streamed = run_tiny("--image", media["jpeg"], "--stream", tokens=12)
    assert streamed.code == 0 and streamed.out == plain.out
    assert len(chunks) > 2  # pieces arrived one by one, then the final newline
    assert chunks[-1] == "\n"


@pytest.mark.parametrize("extra,why", [
    (["--format", "json"], "--stream cannot be combined with --format json"),
    (["--output", "x.txt"], "--stream cannot be combined with --output"),
    (["--task", "ground", "--prompt", "x"], "--stream cannot be combined with --task ground"),
])
def test_stream_refusals(cli, media, tmp_path, extra, why):
    r = cli("--image", media["jpeg"], "--stream", *extra, "--model", str(tmp_path / "x"))
    assert r.code == 2 and why in r.err


def test_stream_refused_in_batch(cli, tmp_path):
    r = cli("--batch", "a.jpg", "--stream", "--model", str(tmp_path / "x"))
    assert r.code == 2 and "--stream cannot be combined with --batch" in r.err


# --- loop guard -------------------------------------------------------------------------


def test_loop_guard_stops_a_loop(cli, loop_model, media):
    r = cli("--image", media["jpeg"], "--model", loop_model, "--max-new-tokens", "600", "--format", "json")
    assert r.code == 0, r
    rec = r.json
    assert rec["finish_reason"] == "repetition"
    assert rec["usage"]["completion_tokens"] < LOOP_MIN_SPAN + 10
    assert rec["text"] == "abc"  # the text before the loop plus one cycle
    assert "repeated itself" in r.err
    off = cli("--image", media["jpeg"], "--model", loop_model, "--max-new-tokens", "600", "--no-loop-guard",
              "--format", "json").json
    assert off["finish_reason"] == "length" and off["usage"]["completion_tokens"] == 600


def test_detect_loop_leaves_real_text_alone():
    import random

    rng = random.Random(0)
    prose = [rng.randrange(5000) for _ in range(1000)]
    assert detect_loop(prose) is None
    table = prose[:100] + [7, 8, 9, 10] * 20 + prose[100:200]  # a few identical rows, then text again
    assert detect_loop(table) is None
    looping = prose[:50] + [1, 2, 3] * 200
    assert detect_loop(looping) == 53


# --- chat ------------------------------------------------------------------------------------


def _read_until(fd, marker: bytes, timeout: float = 60) -> bytes:
    data = b""
    end = time.time() + timeout
    while marker not in data:
        left = end - time.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; got {data[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_chat_in_a_terminal(tiny_model, media, tmp_path):
    saved = tmp_path / "conversation.json"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "predict.py"), "--chat", "--image", str(media["jpeg"]), "--model", tiny_model,
         "--max-new-tokens", "5"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True,
    )
    os.close(slave)
    try:
        _read_until(master, b"> ")
        os.write(master, b"What is this?\n")
        first = _read_until(master, b"> ")
        os.write(master, f"/image {media['jpeg2']}\n".encode())
        assert b"attached" in _read_until(master, b"> ")
        os.write(master, b"And now?\n")
        _read_until(master, b"> ")
        os.write(master, f"/save {saved}\n".encode())
        assert b"saved 4 messages" in _read_until(master, b"> ")
        os.write(master, b"/reset\n")
        assert b"conversation cleared" in _read_until(master, b"> ")
        os.write(master, b"\x04")  # Ctrl-D
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    turns = json.loads(saved.read_text())
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2
    assert turns[0]["content"][0] == {"type": "image", "image": str(media["jpeg"])}
    assert turns[2]["content"][0] == {"type": "image", "image": str(media["jpeg2"])}
    assert turns[1]["content"][0]["text"] and turns[1]["content"][0]["text"].encode() in first
