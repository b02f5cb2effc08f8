"""The tiny checkpoints carry the real Qwen3-VL chat template, and it keeps the real template's rules.

Prompts are rendered through the checkpoint's own processor (apply_chat_template),
as the tool renders them, so what the real template drops or breaks is dropped or
broken here too: a system message counts only as the first message, images and
videos only inside user turns, assistant turns are text only, and the generation
prompt is "<|im_start|>assistant\\n".
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tools" / "qwen3_vl_chat_template.jinja"
# Qwen3-VL-Instruct's chat template: 5,292 bytes with this sha256 (tools/README.md says where it comes from).
TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PAD = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def processor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.new("RGB", (64, 64), "white")


def render(processor, messages, **kwargs) -> str:
    kwargs.setdefault("add_generation_prompt", True)
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def user(*content) -> dict:
    return {"role": "user", "content": list(content)}


def assistant(*content) -> dict:
    return {"role": "assistant", "content": list(content)}


def system(*content) -> dict:
    return {"role": "system", "content": list(content)}


def test_the_checkpoint_holds_the_verbatim_template(tiny_model, processor):
    data = TEMPLATE.read_bytes()
    assert len(data) == 5292 and hashlib.sha256(data).hexdigest() == TEMPLATE_SHA256
    assert processor.chat_template == data.decode("utf-8")
    assert (Path(tiny_model) / "chat_template.jinja").read_text(encoding="utf-8") == data.decode("utf-8")


def test_one_image_and_the_generation_prompt(processor, image):
    msgs = [user({"type": "image", "image": image}, text("Describe this image."))]
    assert render(processor, msgs) == (
        f"<|im_start|>user\n{PAD}Describe this image.<|im_end|>\n<|im_start|>assistant\n")
    assert render(processor, msgs, add_generation_prompt=False) == (
        f"<|im_start|>user\n{PAD}Describe this image.<|im_end|>\n")


def test_no_default_system_prompt_and_a_first_system_message(processor):
    assert not render(processor, [user(text("hi"))]).startswith("<|im_start|>system")
    out = render(processor, [system(text("Be brief.")), user(text("hi"))])
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_system_message_after_the_first_is_dropped(processor):
    """Two system messages (--system before a history's own): only the first reaches the model."""
    out = render(processor, [system(text("FIRST")), system(text("SECOND")), user(text("hi"))])
    assert "FIRST" in out and "SECOND" not in out
    assert out.count("<|im_start|>system") == 1
    mid = render(processor, [user(text("q1")), assistant(text("a1")), system(text("LATE")), user(text("q2"))])
    assert "LATE" not in mid and "system" not in mid


def test_images_count_only_inside_user_turns(processor, image):
    """An image in an assistant or system turn renders no placeholder: the processor then refuses the images."""
    msgs = [
        system({"type": "image", "image": image}, text("sys")),
        user({"type": "image", "image": image}, text("q1")),
        assistant({"type": "image", "image": image}, text("a1")),
        user(text("q2")),
    ]
    out = render(processor, msgs)
    assert out.count("<|image_pad|>") == 1
    assert out == (f"<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n{PAD}q1<|im_end|>\n"
                   "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n")
    # what the real model does with such a history: preprocessing fails on the image count
    with pytest.raises(ValueError, match=r"number of <\|image_pad\|> tokens .* Found total 1 .* and 3 images"):
        processor(text=[out], images=[image, image, image], return_tensors="pt")


def test_assistant_turns_are_text_only(processor):
    out = render(processor, [user(text("q")), assistant(text("part one, "), {"type": "video", "video": "x.mp4"},
                                                        text("part two")), user(text("q2"))])
    assert "<|im_start|>assistant\npart one, part two<|im_end|>\n" in out
    assert "<|video_pad|>" not in out


def test_string_content_is_rendered_as_is(processor):
    out = render(processor, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                             {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}])
    assert out == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                   "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n")


def test_add_vision_id_labels_pictures_and_videos_across_turns(processor, image):
    msgs = [user({"type": "image", "image": image}, {"type": "image", "image": image}, text("compare")),
            assistant(text("ok")),
            user({"type": "image", "image": image}, {"type": "video", "video": "clip.mp4"}, text("and?"))]
    labelled = render(processor, msgs, add_vision_id=True)
    assert f"Picture 1: {PAD}Picture 2: {PAD}compare" in labelled
    assert f"Picture 3: {PAD}Video 1: {VIDEO_PAD}and?" in labelled
    assert "Picture" not in render(processor, msgs)
