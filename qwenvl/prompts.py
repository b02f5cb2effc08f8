"""Prompt building: a task table and pure functions that return chat messages.

No I/O and no model here: tests assert the exact message shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Task:
    name: str
    prompt: str | None  # None: the user must give --prompt
    max_new_tokens: int
    max_pixels: int  # default pixel budget per image
    help: str


TOKEN_PIXELS = 32 * 32  # one visual token covers 32x32 pixels (patch 16, merge 2)

TASKS: dict[str, Task] = {
    "caption": Task(
        "caption",
        "Describe this image in detail.",
        512,
        1280 * TOKEN_PIXELS,
        "a detailed description of the image",
    ),
    "ocr": Task(
        "ocr",
        "Extract all the text in this image, preserving its layout and reading order. "
        "Output only the text.",
        2048,
        2048 * TOKEN_PIXELS,
        "all the text in the image, in reading order",
    ),
    "vqa": Task("vqa", None, 512, 1280 * TOKEN_PIXELS, "answer the question given with --prompt"),
    # ground and extract build their prompts from --prompt / --schema (see structured.py)
    "ground": Task("ground", None, 1024, 2048 * TOKEN_PIXELS,
                   "boxes, in pixels, of what --prompt names (objects, or a phrase)"),
    "extract": Task("extract", None, 2048, 2048 * TOKEN_PIXELS,
                    "JSON valid against --schema, retried with the validation error"),
}

DEFAULT_MIN_PIXELS = 64 * TOKEN_PIXELS  # 65,536: small images are upscaled to at least 64 tokens
VIDEO_FRAME_MAX_PIXELS = 256 * TOKEN_PIXELS  # per frame; keeps a video's token count bounded


def resolve_prompt(task: str, prompt: str | None) -> str:
    spec = TASKS[task]
    if prompt is not None and prompt.strip():
        return prompt
    if spec.prompt is None:
        raise UsageError(f"--task {task} needs a question: add --prompt \"...\"")
    return spec.prompt


def is_image(item: dict) -> bool:
    """A message content item that the chat template renders as an image."""
    return item.get("type") == "image" or "image" in item or "image_url" in item


def is_video(item: dict) -> bool:
    return item.get("type") == "video" or "video" in item


def image_item(image, min_pixels: int, max_pixels: int) -> dict:
    return {"type": "image", "image": image, "min_pixels": min_pixels, "max_pixels": max_pixels}


def video_item(frames: list, sample_fps: float, min_pixels: int, max_pixels: int) -> dict:
    return {
        "type": "video",
        "video": frames,
        "sample_fps": sample_fps,
        "raw_fps": sample_fps,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }


def build_messages(
    prompt: str,
    images: list | None = None,
    video: dict | None = None,
    history: list[dict] | None = None,
    system: str | None = None,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = TASKS["caption"].max_pixels,
) -> list[dict]:
    """Messages for one request: [system], *history, user(images..., [video], text)."""
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.extend(history or [])
    content = [image_item(img, min_pixels, max_pixels) for img in images or []]
    if video is not None:
        content.append(video)
    content.append({"type": "text", "text": prompt})
    messages.append({"role": "user", "content": content})
    return messages


def user_turn(sources: list[str], prompt: str, video: str | None = None) -> dict:
    """The user turn as it is stored in a --history file (sources, not pixels)."""
    content = [{"type": "image", "image": s} for s in sources]
    if video is not None:
        content.append({"type": "video", "video": video})
    content.append({"type": "text", "text": prompt})
    return {"role": "user", "content": content}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}
