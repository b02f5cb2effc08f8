"""The real Qwen3-VL chat template's rules, in the tool: histories that break them never reach the
processor; several images (or videos) in one conversation are labelled "Picture N: " ("Video N: ")."""
from __future__ import annotations

import json

import pytest

from qwenvl.history import template_problem
from qwenvl.prompts import assistant_turn, build_messages


def write(path, turns) -> str:
    text = json.dumps(turns)
    path.write_text(text)
    return text


def user(text="Hello"):
    return {"role": "user", "content": [{"type": "text", "text": text}]}


BAD_HISTORIES = [
    ("system-not-first", lambda img, vid: [user(), assistant_turn("Hi."), {"role": "system", "content": "Be brief."}],
     "message 3: a system message must be the first message"),
    ("image-in-assistant", lambda img, vid: [user(), {"role": "assistant", "content": [
        {"type": "image", "image": img}, {"type": "text", "text": "Here."}]}],
     "message 2: an image in an assistant message; the Qwen3-VL chat template shows images and videos only in "
     "user messages"),
    ("video-in-assistant", lambda img, vid: [user(), {"role": "assistant", "content": [
        {"type": "video", "video": vid}]}],
     "message 2: a video in an assistant message"),
    ("image-in-system", lambda img, vid: [{"role": "system", "content": [{"type": "image", "image": img}]}, user()],
     "message 1: an image in a system message"),
]


@pytest.mark.parametrize("name,turns,expected", BAD_HISTORIES, ids=[c[0] for c in BAD_HISTORIES])
def test_history_breaking_the_template_is_refused(cli, media, tmp_path, name, turns, expected):
    hist = tmp_path / "history.json"
    before = write(hist, turns(str(media["jpeg"]), str(media["mp4"])))
    # The model does not exist: the history is refused before anything is loaded.
    r = cli("--image", media["jpeg2"], "--prompt", "And now?", "--history", hist, "--model", tmp_path / "none")
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {hist}: {expected}"), r.err
    assert hist.read_text() == before and r.out == ""


def test_system_differing_from_the_history_is_refused(cli, media, tmp_path):
    hist = tmp_path / "history.json"
    before = write(hist, [{"role": "system", "content": "Answer in French."}, user(), assistant_turn("Salut.")])
    r = cli("--prompt", "And now?", "--history", hist, "--system", "Answer in German.", "--model", tmp_path / "none")
    assert r.code == 1, r
    assert r.err.strip() == (f"error: {hist}: message 1: the history starts with its own system message, which "
                             "differs from --system; give the same text or leave --system out")
    assert hist.read_text() == before


def test_system_equal_to_the_history_is_kept_once(run_tiny, tmp_path):
    hist = tmp_path / "history.json"
    turns = [{"role": "system", "content": "Answer in French."}, user(), assistant_turn("Salut.")]
    write(hist, turns)
    same = run_tiny("--prompt", "And now?", "--history", hist, "--system", "Answer in French.", "--format", "json")
    assert same.code == 0, same
    write(hist, turns)
    plain = run_tiny("--prompt", "And now?", "--history", hist, "--format", "json")
    assert plain.code == 0, plain
    assert same.json["usage"]["prompt_tokens"] == plain.json["usage"]["prompt_tokens"]  # one system message
    saved = json.loads(hist.read_text())
    assert [t["role"] for t in saved] == ["system", "user", "assistant", "user", "assistant"]


def test_history_system_message_reaches_the_model(run_tiny, tmp_path):
    hist = tmp_path / "history.json"
    write(hist, [user(), assistant_turn("Hi.")])
    without = run_tiny("--prompt", "And now?", "--history", hist, "--format", "json").json
    write(hist, [{"role": "system", "content": "Answer in French, briefly."}, user(), assistant_turn("Hi.")])
    with_system = run_tiny("--prompt", "And now?", "--history", hist, "--format", "json").json
    assert with_system["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]


def test_template_problem_on_built_conversations():
    history = [user(), assistant_turn("Hi.")]
    assert template_problem(build_messages("Next?", images=["img"], history=history, system="Be brief.")) is None
    # a system message after --system's: the template would drop it
    doubled = build_messages("Next?", history=[{"role": "system", "content": "x"}] + history, system="Be brief.")
    assert template_problem(doubled)[0] == 2
    assert template_problem([user(), {"role": "assistant", "content": [{"type": "image", "image": "x"}]}]) == (
        2, "an image in an assistant message; the Qwen3-VL chat template shows images and videos only in user "
           "messages")
    assert template_problem([{"role": "assistant", "content": "plain text"}, user()]) is None


@pytest.fixture(scope="module")
def session(tiny_model):
    from qwenvl.session import ModelSession

    return ModelSession(tiny_model, device="cpu", dtype="float32")


def test_several_images_are_labelled(session):
    from PIL import Image

    a, b = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), "white")
    (two,) = session.prompt_texts([build_messages("Which is brighter?", images=[a, b])])
    assert "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|>" in two
    (one,) = session.prompt_texts([build_messages("Describe.", images=[a])])
    assert "Picture" not in one and "<|vision_start|><|image_pad|><|vision_end|>Describe." in one
    # an image in an earlier turn counts: the new one is Picture 2
    history = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "A?"}]},
               assistant_turn("Dark.")]
    (later,) = session.prompt_texts([build_messages("And this one?", images=[b], history=history)])
    assert later.count("Picture 1: ") == 1 and "Picture 2: <|vision_start|><|image_pad|><|vision_end|>And this" in later


def test_several_videos_are_labelled(session):
    from PIL import Image

    frames = [Image.new("RGB", (64, 64))] * 2
    video = {"type": "video", "video": frames, "sample_fps": 2.0}
    history = [{"role": "user", "content": [video, {"type": "text", "text": "What moves?"}]},
               assistant_turn("A ball.")]
    (text,) = session.prompt_texts([build_messages("And here?", video=video, history=history)])
    assert "Video 1: <|vision_start|><|video_pad|><|vision_end|>" in text
    assert "Video 2: <|vision_start|><|video_pad|><|vision_end|>And here?" in text

