"""Runs a validated command: loads inputs, the model once, generates, writes.

Inputs are read and checked before the model loads, so a missing file fails in
well under a second. Every result is a record (see outputs.py).
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

from pathlib import Path

from . import __version__
from .errors import EXIT_FAILURE, EXIT_OK, InputError, OutputError, QwenVLError, UsageError
from .inputs import LoadOptions, Media, PdfInput, data_uri, load_image_source, load_video, read_bytes, read_json_file, redact
from .outputs import atomic_write, atomic_write_bytes, page_marker, render, write_stdout
from .prompts import (
    VIDEO_FRAME_MAX_PIXELS,
    assistant_turn,
    build_messages,
    image_item,
    resolve_prompt,
    user_turn,
    video_item,
)


class Log:
    """Progress and warnings: stderr only, silenced by --quiet."""

    def __init__(self, quiet: bool, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            print(f"warning: {message}", file=self.stream, flush=True)


def load_options(args) -> LoadOptions:
    return LoadOptions(
        url_timeout=args.url_timeout,
        max_bytes=int(args.max_input_mb * 2**20),
        dpi=args.dpi,
        pages=args.page_list,
    )


def settings_from(args):
    from .session import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        loop_guard=args.loop_guard,
        ignore_eos=args.ignore_eos,
    )


def open_session(args, log: Log):
    from .session import ModelSession

    log(f"loading model {args.model} (device {args.device}, dtype {args.dtype})")
    session = ModelSession(args.model, device=args.device, dtype=args.dtype, log=log, quantize=args.quantize)
    log(f"model loaded in {session.load_s:.1f} s on {session.device} ({session.dtype})")
    return session


def base_record(args, session, prompt: str) -> dict:
    return {
        "text": "",
        "task": args.task,
        "prompt": prompt,
        "model": args.model,
        "inputs": [],
        "device": session.device,
        "dtype": session.dtype,
        "generation": settings_from(args).describe(),
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "finish_reason": None,
        "timings": {"load_s": round(session.load_s, 3), "preprocess_s": 0.0, "generate_s": 0.0, "total_s": 0.0},
        "quantize": getattr(session, "quantize", "none"),
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def media_items(args, media: list[Media], video: Media | None) -> tuple[list, dict | None]:
    images = [m.image for m in media]
    vid = None
    if video is not None:
        vid = video_item(video.frames, video.sample_fps, args.min_pixels // 4,
                         min(args.max_pixels, VIDEO_FRAME_MAX_PIXELS))
    return images, vid


# --- history ---------------------------------------------------------------


def load_history(args, opts: LoadOptions) -> tuple[list[dict], list[dict]]:
    """(turns as stored, turns with their images and videos loaded for the model)."""
    import os

    path = args.history
    if not os.path.exists(path):
        return [], []
    turns = read_json_file(path, "history")
    if not isinstance(turns, list):
        raise InputError(path, "a history file holds a JSON list of chat messages")
    loaded = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant"):
            raise InputError(path, f"message {i} needs a role of system, user or assistant")
        content = turn.get("content")
        if isinstance(content, str):
            loaded.append({"role": turn["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise InputError(path, f"message {i}: content must be a string or a list of items")
        items = []
        for item in content:
            if not isinstance(item, dict):
                raise InputError(path, f"message {i}: each content item must be an object")
            if item.get("type") == "image" or "image" in item:
                src = item.get("image")
                if not isinstance(src, str):
                    raise InputError(path, f"message {i}: an image item needs an \"image\" source")
                loaded_image = load_image_source(src, opts)
                if isinstance(loaded_image, PdfInput):
                    raise InputError(path, f"message {i}: PDFs are not supported in a history")
                items.append({"type": "image", "image": loaded_image.image})
            elif item.get("type") == "video" or "video" in item:
                src = item.get("video")
                if not isinstance(src, str):
                    raise InputError(path, f"message {i}: a video item needs a \"video\" source")
                video = load_video(src, opts, args.fps, args.max_frames)
                items.append(media_items(args, [], video)[1])
            elif "text" in item:
                items.append({"type": "text", "text": str(item["text"])})
            else:
                raise InputError(path, f"message {i}: unknown content item {json.dumps(item)[:60]}")
        loaded.append({"role": turn["role"], "content": items})
    return turns, loaded


def _with_pixels(history: list[dict], args) -> list[dict]:
    out = []
    for turn in history:
        items = [
            image_item(c["image"], args.min_pixels, args.max_pixels) if c.get("type") == "image" else c
            for c in turn["content"]
        ]
        out.append({"role": turn["role"], "content": items})
    return out


# --- one request: generate, then parse what the task needs ---------------------


def task_prompt(args) -> str:
    """The prompt for the task: its default, --prompt, or built from --schema."""
    from .structured import extract_prompt, ground_prompt

    if args.task == "ground":
        return ground_prompt(args.prompt)
    if args.task == "extract":
        return extract_prompt(args.schema_data, args.prompt)
    return resolve_prompt(args.task, args.prompt)


def complete(session, settings, args, messages: list[dict], gen, image=None) -> dict:
    """Fields of a result from its first generation: retries and parsing per task."""
    from .structured import RETRY_PROMPT, ParseError, to_pixels, validate

    fields = {"text": gen.text, "finish_reason": gen.finish_reason, "usage": dict(gen.usage), "error": None}
    timings = {"preprocess_s": gen.preprocess_s, "generate_s": gen.generate_s}
    try:
        if args.task == "ground":
            fields["objects"] = to_pixels(gen.text, image.width, image.height)
        elif args.task == "extract":
            attempts = 1
            while True:
                try:
                    fields["data"] = validate(gen.text, args.schema_data)
                    break
                except ParseError as exc:
                    if attempts > args.retries:
                        raise ParseError(f"no answer valid against the schema after {attempts} "
                                         f"attempt{'s' if attempts > 1 else ''} (last: {exc})") from None
                    messages = messages + [
                        assistant_turn(gen.text),
                        {"role": "user", "content": [{"type": "text", "text": RETRY_PROMPT.format(problem=exc)}]},
                    ]
                    gen = session.generate([messages], settings)[0]
                    attempts += 1
                    fields.update(text=gen.text, finish_reason=gen.finish_reason)
                    for key in ("prompt_tokens", "completion_tokens"):
                        fields["usage"][key] += gen.usage[key]
                    timings["preprocess_s"] += gen.preprocess_s
                    timings["generate_s"] += gen.generate_s
                finally:
                    fields["attempts"] = attempts
    except ParseError as exc:
        fields["error"] = {"type": exc.kind, "message": str(exc)}
    fields["_timings"] = timings
    return fields


def answer(session, settings, args, messages: list[dict], image=None, on_text=None) -> dict:
    gen = session.generate([messages], settings, on_text=on_text)[0]
    return complete(session, settings, args, messages, gen, image)


def apply(record: dict, fields: dict) -> None:
    """Merge a request's fields into a record (or a PDF page entry), adding usage and time."""
    timings = fields.pop("_timings")
    usage = fields.pop("usage")
    record.update(fields)
    if "usage" in record:
        for key in ("prompt_tokens", "completion_tokens"):
            record["usage"][key] += usage[key]
    else:
        record["usage"] = usage
    if "timings" in record:
        for key in ("preprocess_s", "generate_s"):
            record["timings"][key] = round(record["timings"][key] + timings[key], 3)


# --- single run ------------------------------------------------------------


def run(args) -> int:
    if args.batch is not None:
        from .batch import run_batch

        return run_batch(args, Log(args.quiet))
    t_start = time.perf_counter()
    log = Log(args.quiet)
    opts = load_options(args)
    if args.task == "extract":
        from .structured import load_schema

        args.schema_data = load_schema(args.schema)
    prompt = task_prompt(args)

    # 1. Every input is read and checked before the model loads.
    stdin_bytes = None
    media: list[Media] = []
    pdfs: list[PdfInput] = []
    stored_sources: list[str] = []
    for src in args.sources:
        if src == "-":
            stdin_bytes = read_bytes("-", opts)
        loaded = load_image_source(src, opts, stdin=_BytesStdin(stdin_bytes) if src == "-" else None)
        if isinstance(loaded, PdfInput):
            pdfs.append(loaded)
        else:
            media.append(loaded)
            stored_sources.append(data_uri(stdin_bytes) if src == "-" else _storable(src, log))
            for note in loaded.notes:
                log.warn(f"{loaded.source}: {note}")
    if pdfs and media:
        raise UsageError("a PDF cannot share one prompt with other images: give them in separate runs")
    if pdfs and args.history:
        raise UsageError("--history cannot be combined with a PDF (each page is its own answer)")
    if args.page_list and not pdfs:
        raise UsageError("--pages applies to PDFs, but no input is a PDF")
    if args.task == "ground" and not pdfs and len(media) != 1:
        raise UsageError("--task ground takes exactly one image (or a PDF, page by page)")
    if args.annotate and (pdfs or len(media) != 1):
        raise UsageError("--annotate takes exactly one image (not a PDF)")
    video = None
    if args.video:
        if pdfs:
            raise UsageError("--video cannot be combined with a PDF")
        video = load_video(args.video, opts, args.fps, args.max_frames)
        log(f"video {video.source}: {len(video.frames)} frames at {video.sample_fps:g} fps")
        for note in video.notes:
            log.warn(f"{video.source}: {note}")
    stored_history, history = ([], [])
    if args.history:
        stored_history, history = load_history(args, opts)

    if args.chat:
        from .chat import run_chat

        return run_chat(args, log, open_session(args, log), media, stored_sources, stored_history, history)

    # 2. The model loads once.
    session = open_session(args, log)
    record = base_record(args, session, prompt)
    settings = settings_from(args)
    stream = _stdout_streamer() if args.stream else None
    exit_code = EXIT_OK

    if pdfs:
        record["pages"] = []
        total_pages = sum(len(p.page_numbers) for p in pdfs)
        done = 0
        for pdf in pdfs:
            for number in pdf.page_numbers:
                done += 1
                log(f"page {number} of {pdf.source} ({done}/{total_pages})")
                entry = {"source": pdf.source, "page": number, "text": "", "finish_reason": None,
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "error": None}
                try:
                    page = pdf.render(number)
                    for note in page.notes:
                        log.warn(f"{pdf.source} page {number}: {note}")
                    record["inputs"].append(page.describe())
                    messages = build_messages(prompt, images=[page.image], system=args.system,
                                              min_pixels=args.min_pixels, max_pixels=args.max_pixels)
                    if stream:
                        write_stdout(page_marker(pdf.source, number) + "\n", sys.stdout)
                    fields = answer(session, settings, args, messages, image=page, on_text=stream)
                    if stream:
                        write_stdout("\n", sys.stdout)
                    _add_usage(record, fields["usage"])
                    _add_timing(record, fields["_timings"])
                    apply(entry, fields)
                except QwenVLError as exc:
                    entry["error"] = {"type": exc.kind, "message": str(exc)}
                if entry["error"] is not None:
                    print(f"error: {pdf.source} page {number}: {entry['error']['message']}", file=sys.stderr)
                    exit_code = EXIT_FAILURE
                record["pages"].append(entry)
            pdf.close()
        record["text"] = "\n\n".join(p["text"] for p in record["pages"] if p["error"] is None)
        reasons = [p["finish_reason"] for p in record["pages"] if p["finish_reason"]]
        record["finish_reason"] = (
            "length" if "length" in reasons else "repetition" if "repetition" in reasons else "stop" if reasons else None
        )
    else:
        images, vid = media_items(args, media, video)
        messages = build_messages(prompt, images=images, video=vid, history=_with_pixels(history, args),
                                  system=args.system, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
        record["inputs"] = [m.describe() for m in media] + ([video.describe()] if video else [])
        fields = answer(session, settings, args, messages, image=media[0] if media else None, on_text=stream)
        if stream:
            write_stdout("\n", sys.stdout)
        apply(record, fields)
        if record["error"] is not None:
            source = media[0].source if media else "answer"
            print(f"error: {source}: {record['error']['message']}", file=sys.stderr)
            exit_code = EXIT_FAILURE
        if record["finish_reason"] == "length":
            log.warn(f"the answer stopped at the token limit ({args.max_new_tokens}); raise --max-new-tokens")
        elif record["finish_reason"] == "repetition":
            log.warn("the answer repeated itself and was stopped (loop guard); see --no-loop-guard")

    record["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    if args.annotate and record.get("objects") is not None:
        from .structured import annotate

        save_image(annotate(media[0].image, record["objects"]), args.annotate)
        record["annotated"] = args.annotate
    if not stream and (args.format == "json" or exit_code == EXIT_OK or record.get("pages")):
        _emit(record, args)  # a failed parse prints no text result; its JSON record keeps the raw answer
    if args.history and record.get("finish_reason"):
        new_turns = stored_history + [
            user_turn(stored_sources, prompt, video=_storable(args.video, log) if args.video else None),
            assistant_turn(record["text"]),
        ]
        atomic_write(args.history, json.dumps(new_turns, indent=2, ensure_ascii=False) + "\n")
    log(f"done in {record['timings']['total_s']:.1f} s")
    return exit_code


def _storable(source: str, log) -> str:
    """A source as written to a history file: a URL's user:password is never stored."""
    safe = redact(source)
    if safe != source:
        log.warn(f"{safe}: the URL's user:password is not stored in the history file")
    return safe


def _stdout_streamer():
    def on_text(text: str) -> None:
        write_stdout(text, sys.stdout)

    return on_text


def save_image(image, path: str) -> None:
    """Write an image atomically, its format from the extension (PNG when unknown)."""
    import io

    from PIL import Image

    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext, "PNG")
    buf = io.BytesIO()
    try:
        image.save(buf, fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise OutputError(f"{path}: cannot encode the image as {fmt} ({exc})") from None
    atomic_write_bytes(path, buf.getvalue())


def _add_timing(record: dict, timings: dict) -> None:
    t = record["timings"]
    t["preprocess_s"] = round(t["preprocess_s"] + timings["preprocess_s"], 3)
    t["generate_s"] = round(t["generate_s"] + timings["generate_s"], 3)


def _add_usage(record: dict, usage: dict) -> None:
    for key in ("prompt_tokens", "completion_tokens"):
        record["usage"][key] += usage[key]


def _emit(record: dict, args) -> None:
    text = render(record, args.format)
    if args.output:
        atomic_write(args.output, text)
    else:
        write_stdout(text, sys.stdout)


class _BytesStdin:
    """Stands in for stdin once its bytes were read."""

    def __init__(self, data: bytes):
        self._data = data

    def read(self, n: int = -1) -> bytes:
        return self._data
