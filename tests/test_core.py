"""End-to-end tests of the core CLI on the tiny Qwen3-VL checkpoint and real files."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from qwenvl.prompts import TASKS

ISO_UTC = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


def test_caption_to_stdout(run_tiny, media):
    r = run_tiny("--image", media["jpeg"])
    assert r.code == 0, r
    assert r.out.strip(), "an answer is printed"
    assert r.out.endswith("\n") and r.out.count("\n") == 1
    assert "loading model" in r.err and "model loaded" in r.err  # progress on stderr only
    assert "loading" not in r.out


def test_json_fields(run_tiny, media, tiny_model):
    r = run_tiny("--image", media["jpeg"], "--format", "json", "--task", "ocr")
    assert r.code == 0, r
    rec = r.json
    for key in ("text", "task", "prompt", "model", "inputs", "device", "dtype", "generation", "usage",
                "finish_reason", "timings", "version", "created"):
        assert key in rec, key
    assert rec["task"] == "ocr" and rec["prompt"] == TASKS["ocr"].prompt
    assert rec["model"] == tiny_model
    assert rec["inputs"] == [{"source": str(media["jpeg"]), "kind": "image", "width": 320, "height": 240}]
    assert rec["device"] == "cpu" and rec["dtype"] in ("bfloat16", "float32")
    assert rec["generation"]["max_new_tokens"] == 8 and rec["generation"]["do_sample"] is False
    assert rec["usage"]["completion_tokens"] == 8 and rec["usage"]["prompt_tokens"] > 20
    assert rec["finish_reason"] == "length"
    assert set(rec["timings"]) == {"load_s", "preprocess_s", "generate_s", "total_s"}
    assert rec["timings"]["total_s"] >= rec["timings"]["generate_s"] > 0
    import re

    assert re.match(ISO_UTC, rec["created"])


def test_greedy_is_deterministic(run_tiny, media):
    a = run_tiny("--image", media["jpeg"])
    b = run_tiny("--image", media["jpeg"])
    assert a.code == b.code == 0
    assert a.out == b.out


def test_sampling_with_seed_repeats(run_tiny, media):
    args = ("--image", media["jpeg"], "--temperature", "1.5", "--top-k", "50", "--seed", "7", "--format", "json")
    a, b = run_tiny(*args, tokens=12), run_tiny(*args, tokens=12)
    assert a.json["text"] == b.json["text"]
    assert a.json["generation"]["do_sample"] is True and a.json["generation"]["temperature"] == 1.5


def test_vqa_prompt_reaches_the_model(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--task", "vqa", "--prompt", "What colour is it?", "--format", "json")
    assert r.code == 0, r
    assert r.json["prompt"] == "What colour is it?"


def test_prompt_changes_token_count(run_tiny, media):
    short = run_tiny("--image", media["jpeg"], "--prompt", "Hi", "--format", "json").json
    long = run_tiny("--image", media["jpeg"], "--prompt", "Hi " * 30, "--format", "json").json
    assert long["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"]


def test_multi_image_one_prompt(run_tiny, media):
    one = run_tiny("--image", media["jpeg"], "--format", "json").json
    two = run_tiny("--image", media["jpeg"], "--image", media["jpeg2"], "--format", "json").json
    same = run_tiny("--images", media["jpeg"], media["jpeg2"], "--format", "json").json
    assert [i["source"] for i in two["inputs"]] == [str(media["jpeg"]), str(media["jpeg2"])]
    assert two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]
    assert same["usage"] == two["usage"] and same["text"] == two["text"]


def test_png_alpha_and_exif(run_tiny, media):
    r = run_tiny("--images", media["png_alpha"], media["exif"], "--format", "json")
    assert r.code == 0, r
    alpha, rotated = r.json["inputs"]
    assert (alpha["width"], alpha["height"]) == (200, 100)
    assert (rotated["width"], rotated["height"]) == (100, 300)  # EXIF orientation applied


def test_pdf_pages_text_markers(run_tiny, media):
    r = run_tiny("--image", media["pdf"], "--task", "ocr")
    assert r.code == 0, r
    markers = [line for line in r.out.splitlines() if line.startswith("--- page ")]
    assert markers == [f"--- page {n} of {media['pdf']} ---" for n in (1, 2, 3)]


def test_pdf_pages_json_and_selection(run_tiny, media):
    r = run_tiny("--image", media["pdf"], "--pages", "1,3", "--format", "json", "--dpi", "72")
    assert r.code == 0, r
    rec = r.json
    assert [p["page"] for p in rec["pages"]] == [1, 3]
    for page in rec["pages"]:
        assert page["finish_reason"] == "length" and page["usage"]["completion_tokens"] == 8
        assert page["text"]
    assert [i["page"] for i in rec["inputs"]] == [1, 3]
    assert all(i["kind"] == "pdf-page" for i in rec["inputs"])
    assert (rec["inputs"][0]["width"], rec["inputs"][0]["height"]) == (612, 792)  # 72 dpi: points
    assert rec["usage"]["completion_tokens"] == 16


def test_pdf_page_out_of_range(run_tiny, media):
    r = run_tiny("--image", media["pdf"], "--pages", "7")
    assert r.code == 1
    assert r.err.strip().splitlines()[-1] == f"error: {media['pdf']}: page 7 is outside the document (3 pages)"
    assert "Traceback" not in r.err and r.out == ""


def test_video(run_tiny, media):
    r = run_tiny("--video", media["mp4"], "--fps", "4", "--max-frames", "6", "--prompt", "What happens?",
                 "--format", "json")
    assert r.code == 0, r
    (video,) = r.json["inputs"]
    assert video["kind"] == "video" and video["frames"] == 6
    assert (video["width"], video["height"]) == (160, 120)
    assert video["duration_s"] == pytest.approx(2.0, abs=0.2)


def test_video_spread_over_whole_clip(run_tiny, media):
    r = run_tiny("--video", media["mp4"], "--fps", "10", "--max-frames", "4", "--format", "json")
    (video,) = r.json["inputs"]
    assert video["frames"] == 4 and video["sample_fps"] == pytest.approx(2.0, rel=0.05)


def test_url_from_local_server(run_tiny, http_server, media):
    http_server.routes["/photo.jpg"] = (200, {"Content-Type": "image/jpeg"}, Path(media["jpeg"]).read_bytes())
    r = run_tiny("--image", http_server.url + "/photo.jpg", "--format", "json")
    assert r.code == 0, r
    assert r.json["inputs"][0]["source"] == http_server.url + "/photo.jpg"


def test_url_404(run_tiny, http_server):
    r = run_tiny("--image", http_server.url + "/missing.png")
    assert r.code == 1
    assert r.err.strip() == f"error: {http_server.url}/missing.png: HTTP 404 Not Found"


def test_stdin_and_data_uri(run_tiny, media):
    data = Path(media["jpeg"]).read_bytes()
    a = run_tiny("--image", "-", "--format", "json", stdin=data)
    assert a.code == 0, a
    assert a.json["inputs"][0]["source"] == "stdin"
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    b = run_tiny("--image", uri, "--format", "json")
    assert b.code == 0, b
    assert b.json["text"] == a.json["text"]


def test_output_file_atomic_with_parents(run_tiny, media, tmp_path):
    out = tmp_path / "new" / "deeper" / "result.json"
    r = run_tiny("--image", media["jpeg"], "--output", out, "--format", "json")
    assert r.code == 0, r
    assert r.out == ""  # the result went to the file
    rec = json.loads(out.read_text(encoding="utf-8"))
    assert rec["text"]
    assert sorted(os.listdir(out.parent)) == ["result.json"]  # no temporary file left


def test_output_format_from_extension(run_tiny, media, tmp_path):
    out = tmp_path / "r.json"
    assert run_tiny("--image", media["jpeg"], "-o", out).code == 0
    assert json.loads(out.read_text())["task"] == "caption"


def test_non_ascii_json_is_utf8(run_tiny, media, tmp_path):
    out = tmp_path / "r.json"
    r = run_tiny("--image", media["jpeg"], "--task", "vqa", "--prompt", "Qu'est-ce que c'est ? 日本", "-o", out)
    assert r.code == 0, r
    raw = out.read_bytes().decode("utf-8")
    assert "日本" in raw and "\\u" not in raw


def test_history_appends_turns(run_tiny, media, tmp_path):
    hist = tmp_path / "chat.json"
    first = run_tiny("--image", media["jpeg"], "--prompt", "What is this?", "--history", hist)
    assert first.code == 0, first
    turns = json.loads(hist.read_text())
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[0]["content"] == [{"type": "image", "image": str(media["jpeg"])},
                                   {"type": "text", "text": "What is this?"}]
    assert turns[1]["content"] == [{"type": "text", "text": first.out.strip()}]
    second = run_tiny("--prompt", "And the colour?", "--history", hist, "--format", "json")
    assert second.code == 0, second
    turns = json.loads(hist.read_text())
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2]["content"] == [{"type": "text", "text": "And the colour?"}]
    # the earlier image is replayed: the prompt is longer than the new text alone
    assert second.json["usage"]["prompt_tokens"] > 60


def test_history_with_a_video_replays(run_tiny, media, tmp_path):
    hist = tmp_path / "video-chat.json"
    first = run_tiny("--video", media["mp4"], "--max-frames", "4", "--prompt", "What moves?", "--history", hist)
    assert first.code == 0, first
    assert json.loads(hist.read_text())[0]["content"][0] == {"type": "video", "video": str(media["mp4"])}
    second = run_tiny("--prompt", "And then?", "--history", hist, "--max-frames", "4", "--format", "json")
    assert second.code == 0, second
    assert len(json.loads(hist.read_text())) == 4
    assert second.json["usage"]["prompt_tokens"] > 100  # the video's frames are in the prompt again


def test_history_invalid_json(run_tiny, media, tmp_path):
    hist = tmp_path / "bad.json"
    hist.write_text("{not json")
    r = run_tiny("--image", media["jpeg"], "--history", hist)
    assert r.code == 1
    assert r.err.strip().startswith(f"error: {hist}: not valid JSON")
    assert hist.read_text() == "{not json"  # untouched


def test_finish_reason_stop(cli, stop_model, media):
    r = cli("--image", media["jpeg"], "--model", stop_model, "--format", "json")
    assert r.code == 0, r
    assert r.json["finish_reason"] == "stop" and r.json["text"] == ""
    assert r.json["usage"]["completion_tokens"] == 1


def test_quiet_silences_progress(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--quiet")
    assert r.code == 0 and r.err == "" and r.out.strip()


def test_missing_file_fails_before_model_load(cli, media, tmp_path):
    missing = tmp_path / "nope.jpg"
    r = cli("--image", missing, "--model", str(tmp_path / "no-model-here"))
    assert r.code == 1
    assert r.err.strip() == f"error: {missing}: no such file"


def test_model_folder_missing(cli, media, tmp_path):
    r = cli("--image", media["jpeg"], "--model", str(tmp_path / "absent"))
    assert r.code == 1
    assert "does not exist" in r.err and "--model" in r.err and len(r.err.strip().splitlines()) == 2


@pytest.mark.parametrize("cuda", [False, True])
def test_the_load_pauses_the_collector_and_freezes_what_it_keeps(tiny_model, monkeypatch, cuda):
    """The collector is off while the model loads; what the load keeps is then frozen, and the
    collector is back on. On the CPU no pass at all (the load's garbage holds no tensor); where
    CUDA was used, one full pass at the end first."""
    import gc

    from qwenvl import session as sessions
    from qwenvl.options import ModelOptions
    from qwenvl.pipeline import open_session

    passes, during_load = [], []

    def count(phase, info):
        if phase == "start":
            passes.append((info["generation"], gc.isenabled()))

    def log(message):  # the load logs as it goes (int8: quantizing, caching)
        during_load.append((message.split(":")[0], gc.isenabled()))

    options = ModelOptions(name=tiny_model, device="cpu", dtype="float32", quantize="int8")
    open_session(options, lambda s: None)  # quantizes (and collects what that freed) or reads the cache
    monkeypatch.setattr(sessions, "_cuda_used", lambda: cuda)
    gc.callbacks.append(count)
    try:
        session = open_session(options, log)  # from the int8 cache
    finally:
        gc.callbacks.remove(count)
    assert ("int8", False) in during_load and ("int8", True) not in during_load
    assert [p for p in passes if not p[1]] == ([(2, False)] if cuda else [])
    assert gc.isenabled()
    tracked = {id(o) for o in gc.get_objects()}  # frozen objects are not among them
    assert id(session.model) not in tracked and gc.is_tracked(session.model)


def test_a_failed_load_resumes_the_collector(cli, media, tmp_path):
    import gc

    frozen = gc.get_freeze_count()
    r = cli("--image", media["jpeg"], "--model", str(tmp_path / "absent"))
    assert r.code == 1
    assert gc.isenabled() and gc.get_freeze_count() <= frozen  # nothing frozen (frozen objects can be freed)


def test_hub_model_not_cached_offline(cli, media, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    r = cli("--image", media["jpeg"], "--model", "Qwen/Qwen3-VL-2B-Instruct", "--quiet")
    assert r.code == 1
    line = r.err.strip()
    assert "Qwen/Qwen3-VL-2B-Instruct" in line and str(tmp_path / "hub") in line and "--model" in line
    assert len(line.splitlines()) == 1


def test_model_env_variable(cli, tiny_model, media, monkeypatch):
    monkeypatch.setenv("QWENVL_MODEL", tiny_model)
    r = cli("--image", media["jpeg"], "--max-new-tokens", "4", "--format", "json")
    assert r.code == 0, r
    assert r.json["model"] == tiny_model


def test_device_cuda_absent_is_an_error(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--device", "cuda")
    assert r.code == 1
    assert r.err.strip().splitlines()[-1].startswith("error: --device cuda: CUDA is not available")


def test_dtype_float32(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--dtype", "float32", "--device", "cpu", "--format", "json")
    assert r.json["dtype"] == "float32" and r.json["device"] == "cpu"


def test_max_pixels_bounds_tokens(run_tiny, tmp_path):
    import media_factory

    big = media_factory.jpeg(tmp_path / "scan.jpg", size=(4000, 3000))
    r = run_tiny("--image", big, "--max-pixels", str(64 * 1024), "--format", "json")
    assert r.code == 0, r
    assert r.json["inputs"][0]["width"] == 4000  # the original size is reported
    assert r.json["usage"]["prompt_tokens"] < 64 + 40  # at most 64 visual tokens, plus the text


def test_history_never_stores_url_credentials(run_tiny, http_server, media, tmp_path):
    http_server.routes["/p.jpg"] = (200, {"Content-Type": "image/jpeg"}, Path(media["jpeg"]).read_bytes())
    url = http_server.url.replace("http://", "http://user:s3cret@") + "/p.jpg"
    hist = tmp_path / "h.json"
    r = run_tiny("--image", url, "--history", hist)
    assert r.code == 0, r
    assert "s3cret" not in hist.read_text() and "s3cret" not in r.err and "s3cret" not in r.out
    assert json.loads(hist.read_text())[0]["content"][0]["image"] == http_server.url + "/p.jpg"


def test_undecodable_file_name_gives_valid_json(run_tiny, media, tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jpg"))
    odd.write_bytes(Path(media["jpeg"]).read_bytes())
    out = tmp_path / "r.json"
    r = run_tiny("--image", odd, "--output", out)
    assert r.code == 0, r
    rec = json.loads(out.read_bytes().decode("utf-8"))  # strict UTF-8
    assert rec["inputs"][0]["source"].endswith("caf\udce9.jpg")


def test_a_streamed_answer_cut_by_a_failure_still_ends_its_line(capsys):
    """--stream / --chat: after a generation that failed part-way, stdout's line is closed; untouched otherwise."""
    from qwenvl.outputs import StdoutStream

    stream = StdoutStream()
    stream.end_line(always=False)  # nothing was streamed: stdout stays empty
    assert capsys.readouterr().out == ""
    stream("Bonjour, ")
    stream("le monde")
    stream.end_line(always=False)
    assert capsys.readouterr().out == "Bonjour, le monde\n"
    stream.end_line()  # a finished answer always ends its line
    assert capsys.readouterr().out == "\n"
