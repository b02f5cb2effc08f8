"""One request pipeline: requests in, result records out, the same for every mode.

A mode (one image, several images, PDF pages, video, --history, --batch,
--chat, --stream) only turns its inputs into `Request`s and hands the records
to a sink. `Pipeline.run` does everything else in one place: the task's
prompt, the messages (checked against the chat template's rules), generation
for all requests together, the task's post-processing (ground: boxes in
pixels and --annotate; extract: parse, validate, retry with the validation
error), usage, timings and the record itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import __version__
from .errors import QwenVLError
from .history import check_conversation, video_message_item
from .options import ModelOptions, Options, TaskOptions
from .prompts import assistant_turn, build_messages, resolve_prompt

TIMING_KEYS = ("preprocess_s", "generate_s")
USAGE_KEYS = ("prompt_tokens", "completion_tokens")


@dataclass
class Request:
    """One conversation to answer: the new turn's inputs and the turns before it."""

    images: list = field(default_factory=list)  # Media: images or rendered PDF pages, in order
    video: object = None  # Media of kind "video"
    history: list[dict] = field(default_factory=list)  # earlier turns, loaded (history.load_history)
    prompt: str | None = None  # this turn's own text (chat); None: the task's prompt
    identity: dict = field(default_factory=dict)  # record fields naming it (batch: key, source, page)


@dataclass
class Result:
    record: dict
    error: QwenVLError | None = None  # also in record["error"]
    generated: bool = False  # the model answered (an error is then the task's post-processing)


def task_prompt(task: TaskOptions) -> str:
    """The prompt for the task: its default, --prompt, or built for ground and extract."""
    from .structured import extract_prompt, ground_prompt

    if task.name == "ground":
        return ground_prompt(task.prompt)
    if task.name == "extract":
        return extract_prompt(task.schema, task.prompt)
    return resolve_prompt(task.name, task.prompt)


def open_session(model: ModelOptions, log):
    from .session import ModelSession, loaded_for_life

    log(f"loading model {model.name} (device {model.device}, dtype {model.dtype})")
    with loaded_for_life():
        session = ModelSession(model.name, device=model.device, dtype=model.dtype, log=log,
                               quantize=model.quantize)
    log(f"model loaded in {session.load_s:.1f} s on {session.device} ({session.dtype})")
    return session


class Pipeline:
    def __init__(self, session, options: Options):
        self.session = session
        self.options = options
        self.task = options.task
        self.settings = options.generation
        self.prompt = task_prompt(options.task)

    # --- records --------------------------------------------------------------

    def new_record(self, request: Request | None = None) -> dict:
        """A record before any answer: what was asked, of which model, with what settings."""
        record = {
            "text": "",
            "task": self.task.name,
            "prompt": (request.prompt if request and request.prompt else self.prompt),
            "model": self.options.model.name,
            "inputs": [],
            "device": self.session.device,
            "dtype": self.session.dtype,
            "device_info": dict(self.session.device_info),
            "generation": self.settings.describe(),
            "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            "finish_reason": None,
            "timings": {"load_s": round(self.session.load_s, 3), "preprocess_s": 0.0, "generate_s": 0.0,
                        "total_s": 0.0},
            "quantize": getattr(self.session, "quantize", "none"),
            "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        if request is not None:
            record.update(request.identity)
            if request.identity:
                record["error"] = None
            record["inputs"] = [m.describe() for m in request.images]
            if request.video is not None:
                record["inputs"].append(request.video.describe())
        return record

    def failed(self, exc: QwenVLError, request: Request | None = None) -> Result:
        """The record of a request that never reached the model (or whose generation failed)."""
        record = self.new_record(request)
        record["error"] = exc.as_record()
        return Result(record, exc)

    def new_document(self) -> dict:
        """The record of a run over PDF pages: one entry per page, usage and timings summed."""
        record = self.new_record()
        record["pages"] = []
        return record

    def add_page(self, document: dict, source: str, page: int, result: Result | QwenVLError) -> dict:
        entry = {"source": source, "page": page, "text": "", "finish_reason": None,
                 "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "error": None}
        if isinstance(result, QwenVLError):
            entry["error"] = result.as_record()
        else:
            rec = result.record
            entry.update(text=rec["text"], finish_reason=rec["finish_reason"], usage=dict(rec["usage"]),
                         error=rec["error"])
            for key in ("attempts", "objects", "data"):
                if key in rec:
                    entry[key] = rec[key]
            for key in USAGE_KEYS:
                document["usage"][key] += rec["usage"][key]
            for key in TIMING_KEYS:
                document["timings"][key] = round(document["timings"][key] + rec["timings"][key], 3)
        document["pages"].append(entry)
        return entry

    @staticmethod
    def finish_document(document: dict) -> None:
        pages = document["pages"]
        document["text"] = "\n\n".join(p["text"] for p in pages if p["error"] is None)
        reasons = [p["finish_reason"] for p in pages if p["finish_reason"]]
        document["finish_reason"] = (
            "length" if "length" in reasons else "repetition" if "repetition" in reasons
            else "stop" if reasons else None
        )

    # --- messages ----------------------------------------------------------------

    def conversation(self, request: Request) -> list[dict]:
        vision = self.options.vision
        system = self.task.system
        if request.history and request.history[0]["role"] == "system":
            system = None  # the history's own (history.check_system made sure --system is the same)
        video = video_message_item(request.video, vision) if request.video is not None else None
        messages = build_messages(request.prompt or self.prompt, images=[m.image for m in request.images],
                                  video=video, history=request.history, system=system,
                                  min_pixels=vision.min_pixels, max_pixels=vision.max_pixels)
        check_conversation(messages, "conversation")
        return messages

    # --- the run -------------------------------------------------------------------

    def run(self, requests: list[Request], on_text=None) -> list[Result]:
        """One result per request, in order; the requests are generated together."""
        if not requests:
            return []
        conversations = [self.conversation(r) for r in requests]
        t0 = time.perf_counter()
        try:
            generations = self.session.generate(conversations, self.settings, on_text=on_text)
        except QwenVLError as exc:
            if len(requests) > 1:  # e.g. out of memory: one at a time
                return [result for request in requests for result in self.run([request])]
            return [self.failed(exc, requests[0])]
        elapsed = time.perf_counter() - t0
        return [self._complete(request, messages, gen, elapsed, len(requests))
                for request, messages, gen in zip(requests, conversations, generations)]

    def _complete(self, request: Request, messages: list[dict], gen, elapsed: float, batch_size: int) -> Result:
        record = self.new_record(request)
        record.update(text=gen.text, finish_reason=gen.finish_reason, usage=dict(gen.usage), error=None)
        timings = record["timings"]
        timings.update(preprocess_s=gen.preprocess_s, generate_s=gen.generate_s, total_s=elapsed)
        if batch_size > 1:
            timings["batch_size"] = batch_size
        error = None
        try:
            if self.task.name == "ground":
                self._ground(record, request)
            elif self.task.name == "extract":
                self._extract(record, messages, gen)
        except QwenVLError as exc:
            error = exc
            record["error"] = exc.as_record()
        for key in TIMING_KEYS + ("total_s",):
            timings[key] = round(timings[key], 3)
        if error is None and self.task.annotate and record.get("objects") is not None:
            from .structured import annotate
            from .outputs import save_image

            save_image(annotate(request.images[0].image, record["objects"]), self.task.annotate)
            record["annotated"] = self.task.annotate
        return Result(record, error, generated=True)

    def _ground(self, record: dict, request: Request) -> None:
        from .structured import to_pixels

        image = request.images[0]  # the CLI allows ground with exactly one image (or a PDF page)
        record["objects"] = to_pixels(record["text"], image.width, image.height)

    def _extract(self, record: dict, messages: list[dict], gen) -> None:
        """Validate against the schema; ask again with the validation error up to --retries times."""
        from .structured import RETRY_PROMPT, ParseError, validate

        attempts = 1
        record["attempts"] = attempts
        while True:
            try:
                record["data"] = validate(gen.text, self.task.schema)
                return
            except ParseError as exc:
                if attempts > self.task.retries:
                    raise ParseError(f"no answer valid against the schema after {attempts} "
                                     f"attempt{'s' if attempts > 1 else ''} (last: {exc})") from None
                messages = messages + [
                    assistant_turn(gen.text),
                    {"role": "user", "content": [{"type": "text", "text": RETRY_PROMPT.format(problem=exc)}]},
                ]
            t0 = time.perf_counter()
            gen = self.session.generate([messages], self.settings)[0]
            attempts += 1
            record.update(text=gen.text, finish_reason=gen.finish_reason, attempts=attempts)
            for key in USAGE_KEYS:
                record["usage"][key] += gen.usage[key]
            record["timings"]["preprocess_s"] += gen.preprocess_s
            record["timings"]["generate_s"] += gen.generate_s
            record["timings"]["total_s"] += time.perf_counter() - t0
