"""Structured answers: grounding boxes in pixels, and JSON validated against a schema.

Pure functions over the model's text (no torch): fence stripping, JSON
parsing, coordinate conversion, schema validation, and box drawing.
"""
from __future__ import annotations

import json
import re

from .errors import InputError, QwenVLError
from .inputs import read_json_file

GROUND_PROMPT = (
    "Locate {target} in the image. Output a JSON list with one object per instance found: "
    '{{"bbox_2d": [x1, y1, x2, y2], "label": "<name>"}}, coordinates relative to the image on a 0-1000 scale.'
)

EXTRACT_PROMPT = (
    "Extract the information in this image as JSON that is valid against this JSON Schema:\n"
    "{schema}\n"
    "Output only the JSON, with no explanation."
)

RETRY_PROMPT = (
    "Your answer is not valid: {problem}\n"
    "Answer again with only the corrected JSON, valid against the schema."
)

SCALE = 1000.0  # Qwen3-VL's coordinates are relative, 0..1000


class ParseError(QwenVLError):
    """The model's answer is not in the expected form (its raw text is kept)."""

    kind = "parse_error"


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def parse_json_answer(text: str):
    """The JSON value in an answer, with or without a ```json fence; ParseError if none."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] or [text]
    errors = []
    for candidate in candidates:
        candidate = candidate.strip()
        try:
            return json.loads(candidate)
        except ValueError as exc:
            errors.append(str(exc))
        start = min((i for i in (candidate.find("["), candidate.find("{")) if i >= 0), default=-1)
        if start >= 0:
            try:
                value, _ = json.JSONDecoder().raw_decode(candidate[start:])
                return value
            except ValueError as exc:
                errors.append(str(exc))
    raise ParseError(f"the answer is not valid JSON ({errors[-1] if errors else 'empty answer'})")


# --- grounding --------------------------------------------------------------


def ground_prompt(target: str) -> str:
    return GROUND_PROMPT.format(target=target.strip())


def to_pixels(answer: str, width: int, height: int) -> list[dict]:
    """Boxes and points on the 0-1000 scale to pixels of a width x height image, clamped."""
    value = parse_json_answer(answer)
    if isinstance(value, dict):
        value = value.get("objects", [value]) if "bbox_2d" not in value and "point_2d" not in value else [value]
    if not isinstance(value, list):
        raise ParseError("the answer is JSON but not a list of objects")
    objects = []
    for item in value:
        if not isinstance(item, dict):
            raise ParseError(f"expected objects with bbox_2d or point_2d, got {json.dumps(item)[:60]}")
        label = str(item.get("label", item.get("name", "")))
        if "bbox_2d" in item:
            box = _numbers(item["bbox_2d"], 4)
            x1, x2 = sorted((_scale(box[0], width), _scale(box[2], width)))
            y1, y2 = sorted((_scale(box[1], height), _scale(box[3], height)))
            objects.append({"label": label, "bbox": [x1, y1, x2, y2]})
        elif "point_2d" in item:
            point = _numbers(item["point_2d"], 2)
            objects.append({"label": label, "point": [_scale(point[0], width), _scale(point[1], height)]})
        else:
            raise ParseError(f"an object has neither bbox_2d nor point_2d: {json.dumps(item)[:60]}")
    return objects


def _numbers(value, count: int) -> list[float]:
    if not isinstance(value, list) or len(value) != count or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ParseError(f"expected {count} numbers, got {json.dumps(value)[:60]}")
    return [float(v) for v in value]


def _scale(value: float, size: int) -> int:
    return int(round(min(max(value, 0.0), SCALE) / SCALE * size))


def annotate(image, objects: list[dict]):
    """A copy of the image with each box (or point) drawn and labelled."""
    from PIL import ImageDraw, ImageFont

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 400))
    try:
        font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 50)))
    except TypeError:
        font = ImageFont.load_default()
    colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]
    for i, obj in enumerate(objects):
        color = colors[i % len(colors)]
        if "bbox" in obj:
            x1, y1, x2, y2 = obj["bbox"]
            draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
            anchor = (x1, max(0, y1 - font.size - 4) if hasattr(font, "size") else y1)
        else:
            x, y = obj["point"]
            r = width * 3
            draw.ellipse((x - r, y - r, x + r, y + r), outline=color, width=width)
            anchor = (x + r, y)
        if obj.get("label"):
            left, top, right, bottom = draw.textbbox(anchor, obj["label"], font=font)
            draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=color)
            draw.text(anchor, obj["label"], fill="white", font=font)
    return canvas


# --- schema extraction ----------------------------------------------------------


def load_schema(path: str) -> dict:
    import jsonschema

    schema = read_json_file(path, "schema")
    if not isinstance(schema, dict):
        raise InputError(path, "a JSON Schema is a JSON object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(path, f"not a valid JSON Schema ({exc.message})") from None
    return schema


def extract_prompt(schema: dict, instruction: str | None = None) -> str:
    prompt = EXTRACT_PROMPT.format(schema=json.dumps(schema, ensure_ascii=False))
    return f"{instruction.strip()}\n{prompt}" if instruction else prompt


def validate(answer: str, schema: dict):
    """The parsed answer if it is valid against the schema; ParseError naming the problem otherwise."""
    import jsonschema

    value = parse_json_answer(answer)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ParseError(f"at {where}: {error.message}")
    return value
