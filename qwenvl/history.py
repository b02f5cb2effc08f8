"""Chat histories: reading a --history file, and the real chat template's rules.

The Qwen3-VL chat template renders a system message only when it is the first
message, image and video placeholders only inside user messages, and assistant
messages as text only. Anything else would be dropped silently or break the
processor, so a conversation that breaks these rules is refused, naming the
message, before it reaches the model.
"""
from __future__ import annotations

import json
import os

from .errors import InputError
from .inputs import LoadOptions, PdfInput, load_image_source, load_video, read_json_file
from .options import VisionOptions
from .prompts import VIDEO_FRAME_MAX_PIXELS, image_item, is_image, is_video, video_item

ROLES = ("system", "user", "assistant")


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(str(item.get("text", "")) for item in content or [] if isinstance(item, dict))


def template_problem(messages: list[dict]) -> tuple[int, str] | None:
    """(1-based message number, what is wrong) for the first message the template would not render as given."""
    for number, message in enumerate(messages, 1):
        role = message.get("role")
        if role == "system" and number != 1:
            return number, ("a system message must be the first message "
                            "(the Qwen3-VL chat template ignores it anywhere else)")
        content = message.get("content")
        if role == "user" or not isinstance(content, list):
            continue
        for item in content:
            if isinstance(item, dict) and (is_image(item) or is_video(item)):
                kind = "an image" if is_image(item) else "a video"
                return number, (f"{kind} in {'an' if role == 'assistant' else 'a'} {role} message; the Qwen3-VL "
                                "chat template shows images and videos only in user messages")
    return None


def check_conversation(messages: list[dict], name: str) -> None:
    """InputError naming the message if the chat template would drop or break part of the conversation."""
    problem = template_problem(messages)
    if problem is not None:
        raise InputError(name, f"message {problem[0]}: {problem[1]}")


def check_system(turns: list[dict], system: str | None, name: str) -> None:
    """--system and a history that starts with its own system message: the same text, or refused."""
    if not system or not turns or turns[0].get("role") != "system":
        return
    if message_text(turns[0]).strip() != system.strip():
        raise InputError(name, "message 1: the history starts with its own system message, which differs "
                               "from --system; give the same text or leave --system out")


def load_history(path: str, vision: VisionOptions, opts: LoadOptions,
                 system: str | None = None) -> tuple[list[dict], list[dict]]:
    """(turns as stored, turns with their images and videos loaded for the model).

    A file that does not exist yet is an empty history (the run creates it).
    """
    if not os.path.exists(path):
        return [], []
    turns = read_json_file(path, "history")
    if not isinstance(turns, list):
        raise InputError(path, "a history file holds a JSON list of chat messages")
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise InputError(path, f"message {i} needs a role of system, user or assistant")
        content = turn.get("content")
        if not isinstance(content, (str, list)):
            raise InputError(path, f"message {i}: content must be a string or a list of items")
        if isinstance(content, list) and not all(isinstance(item, dict) for item in content):
            raise InputError(path, f"message {i}: each content item must be an object")
    check_conversation(turns, path)  # before any image or video is read
    check_system(turns, system, path)
    loaded = [{"role": turn["role"], "content": _load_content(turn["content"], i, path, vision, opts)}
              for i, turn in enumerate(turns, 1)]
    return turns, loaded


def _load_content(content, i: int, path: str, vision: VisionOptions, opts: LoadOptions) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    items = []
    for item in content:
        if is_image(item):
            src = item.get("image")
            if not isinstance(src, str):
                raise InputError(path, f"message {i}: an image item needs an \"image\" source")
            loaded = load_image_source(src, opts)
            if isinstance(loaded, PdfInput):
                loaded.close()
                raise InputError(path, f"message {i}: PDFs are not supported in a history")
            items.append(image_item(loaded.image, vision.min_pixels, vision.max_pixels))
        elif is_video(item):
            src = item.get("video")
            if not isinstance(src, str):
                raise InputError(path, f"message {i}: a video item needs a \"video\" source")
            items.append(video_message_item(load_video(src, opts, vision.fps, vision.max_frames), vision))
        elif "text" in item:
            items.append({"type": "text", "text": str(item["text"])})
        else:
            raise InputError(path, f"message {i}: unknown content item {json.dumps(item)[:60]}")
    return items


def video_message_item(video, vision: VisionOptions) -> dict:
    """A loaded video as a message item, its frames sized for the model."""
    return video_item(video.frames, video.sample_fps, vision.min_pixels // 4,
                      min(vision.max_pixels, VIDEO_FRAME_MAX_PIXELS))
