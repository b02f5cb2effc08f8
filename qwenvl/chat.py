"""Interactive chat: each line typed is a user turn; the model loads once.

Answers stream to stdout; the prompt, notices and errors go to stderr.
Commands: /image PATH attaches an image to the next turn, /save FILE writes the
conversation in the --history format, /reset starts over, /help, Ctrl-D ends.
Each turn is a request through the one pipeline (pipeline.py).
"""
from __future__ import annotations

import json
import sys

from .errors import EXIT_OK, QwenVLError
from .inputs import PdfInput, load_image_source, redact
from .outputs import StdoutStream, atomic_write
from .pipeline import Pipeline, Request
from .prompts import assistant_turn, image_item, user_turn

HELP = "commands: /image PATH (attach to your next message), /save FILE, /reset, /help; Ctrl-D ends"


def run_chat(pipeline: Pipeline, media, sources, stored_history, history) -> int:
    """media: images attached to the first turn; sources: how they are saved (redacted)."""
    options = pipeline.options
    vision = options.vision
    opts = vision.load_options()
    stored = list(stored_history)  # as written by /save (sources, not pixels)
    turns = list(history)  # what the model sees (PIL images)
    pending = list(zip(media, sources))
    err = sys.stderr

    def say(message: str) -> None:
        print(message, file=err, flush=True)

    stream = StdoutStream()

    say(f"chatting with {options.model.name}. {HELP}")
    for m, _ in pending:
        say(f"attached {m.source} ({m.width}x{m.height})")
    queued = [options.task.prompt] if options.task.prompt else []
    while True:
        if queued:
            line = queued.pop(0)
        else:
            err.write("> ")
            err.flush()
            raw = sys.stdin.readline()
            if not raw:  # Ctrl-D
                err.write("\n")
                return EXIT_OK
            line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            arg = arg.strip()
            if command == "/image" and arg:
                try:
                    loaded = load_image_source(arg, opts)
                    if isinstance(loaded, PdfInput):
                        loaded.close()
                        raise QwenVLError(f"{arg}: PDFs cannot be attached in a chat; use --image FILE.pdf")
                    pending.append((loaded, redact(arg)))
                    say(f"attached {loaded.source} ({loaded.width}x{loaded.height})")
                except QwenVLError as exc:
                    say(f"error: {exc}")
            elif command == "/save" and arg:
                try:
                    atomic_write(arg, json.dumps(stored, indent=2, ensure_ascii=False) + "\n")
                    say(f"saved {len(stored)} messages to {arg}")
                except QwenVLError as exc:
                    say(f"error: {exc}")
            elif command == "/reset":
                stored, turns, pending = [], [], []
                say("conversation cleared")
            elif command in ("/help", "/?"):
                say(HELP)
            elif command in ("/quit", "/exit"):
                return EXIT_OK
            else:
                say(f"error: unknown or incomplete command {line!r}; {HELP}")
            continue
        images = [m for m, _ in pending]
        try:
            (result,) = pipeline.run([Request(images=images, history=turns, prompt=line)], on_text=stream)
        except QwenVLError as exc:
            say(f"error: {exc}")
            continue
        stream.end_line(always=result.error is None)
        if result.error is not None:
            say(f"error: {result.error}")
            continue
        record = result.record
        if record["finish_reason"] == "length":
            say(f"(stopped at the token limit, {options.generation.max_new_tokens} tokens)")
        elif record["finish_reason"] == "repetition":
            say("(stopped: the answer was repeating itself)")
        turns += [
            {"role": "user", "content": [image_item(m.image, vision.min_pixels, vision.max_pixels) for m in images]
             + [{"type": "text", "text": line}]},
            assistant_turn(record["text"]),
        ]
        stored += [user_turn([s for _, s in pending], line), assistant_turn(record["text"])]
        pending = []
