"""Batch mode: many inputs, one model load, one result record per image or PDF page.

Sources are expanded lazily into requests; each request's record is written
(and flushed) as soon as it is done, so a killed run keeps everything it
finished and `--resume` continues from there.
"""
from __future__ import annotations

import glob as globlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlsplit

from .errors import EXIT_FAILURE, EXIT_OK, Interrupted, OutputError, QwenVLError, UsageError
from .inputs import IMAGE_EXTENSIONS, PDF_EXTENSIONS, PdfInput, load_image_source, redact, source_type
from .outputs import render, render_jsonl, atomic_write

BATCH_EXTENSIONS = IMAGE_EXTENSIONS | PDF_EXTENSIONS
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class Item:
    """One file or URL to read; `rel` names its output file under --output-dir."""

    source: str
    rel: str
    error: str | None = None

    @property
    def shown(self) -> str:
        return redact(self.source)


@dataclass
class Request:
    key: str  # unique per image or PDF page: the record's identity for --resume
    source: str
    page: int | None
    rel: str
    media: object = None
    error: QwenVLError | None = None


# --- expanding sources ------------------------------------------------------


def expand(specs: list[str], stdin=None) -> list[Item]:
    """Files, folders (recursive), globs, URLs and @lists to a sorted list of items."""
    items: list[Item] = []
    for spec in specs:
        items.extend(_expand_one(spec, stdin))
    seen, unique = set(), []
    for item in items:  # the same file named twice is one request
        key = item.source if item.error else _identity(item.source)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _identity(source: str) -> str:
    if source_type_safe(source) == "file":
        return os.path.realpath(source)
    return source


def source_type_safe(source: str) -> str:
    try:
        return source_type(source)
    except QwenVLError:
        return "refused"


def _expand_one(spec: str, stdin) -> list[Item]:
    if spec.startswith("@"):
        return _expand_list(spec[1:], stdin)
    kind = source_type_safe(spec)
    if kind in ("url", "data", "refused"):
        return [Item(spec, _url_name(spec))]
    if kind == "stdin":
        return [Item(spec, "", error="stdin (-) is not a batch source; use @- to read a list of sources")]
    path = Path(spec)
    if path.is_dir():
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in BATCH_EXTENSIONS:
                    full = os.path.join(root, name)
                    found.append(Item(full, os.path.relpath(full, path)))
        if not found:
            return [Item(spec, "", error="the folder holds no image or PDF files")]
        return found
    if _GLOB_CHARS.search(spec) and not path.exists():
        matches = sorted(m for m in globlib.glob(spec, recursive=True) if os.path.isfile(m))
        if not matches:
            return [Item(spec, "", error="no files match this pattern")]
        return [Item(m, os.path.basename(m)) for m in matches]
    return [Item(spec, os.path.basename(spec))]


def _expand_list(path: str, stdin) -> list[Item]:
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        text, base = stream.read(), Path.cwd()
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return [Item("@" + path, "", error="no such list file")]
        except (OSError, UnicodeDecodeError) as exc:
            return [Item("@" + path, "", error=f"cannot read the list file ({getattr(exc, 'strerror', None) or exc})")]
        base = Path(path).parent
    items = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if source_type_safe(line) == "file" and not os.path.isabs(line) and not line.startswith("@"):
            line = str(base / line) if path != "-" else line
        items.extend(_expand_one(line, stdin) if not line.startswith("@") else
                     [Item(line, "", error="nested @lists are not supported")])
    return items


def _url_name(url: str) -> str:
    if url.startswith("data:"):
        return "data"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "url"
    name = PurePosixPath(parts.path).name
    return name or (parts.hostname or "url")


# --- output names -----------------------------------------------------------

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_relpath(rel: str) -> str:
    """A relative path that cannot leave its folder: no '..', no root, no odd characters."""
    parts = []
    for part in re.split(r"[\\/]+", rel):
        if part in ("", ".", ".."):
            continue
        part = _UNSAFE.sub("_", part).lstrip(".") or "_"
        parts.append(part[:150])
    return "/".join(parts) or "input"


class Namer:
    """Output file names under --output-dir, unique within a run."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.used: set[str] = set()

    def name(self, rel: str, page: int | None) -> str:
        base = safe_relpath(rel) + (f".p{page}" if page is not None else "")
        candidate, n = base, 1
        while candidate.lower() in self.used:
            n += 1
            candidate = f"{base}~{n}"
        self.used.add(candidate.lower())
        return f"{candidate}.{self.fmt}"


# --- requests ---------------------------------------------------------------


def requests_for(items: list[Item], opts, on_pages=None) -> Iterator[Request]:
    """Each image, and each PDF page, as a request; media loaded lazily."""
    for item in items:
        if item.error:
            yield Request(item.shown, item.shown, None, item.rel,
                          error=_InputProblem(item.shown, item.error))
            continue
        try:
            loaded = load_image_source(item.source, opts)
        except QwenVLError as exc:
            yield Request(item.shown, item.shown, None, item.rel, error=exc)
            continue
        if isinstance(loaded, PdfInput):
            if on_pages:
                on_pages(len(loaded.page_numbers))
            try:
                for number in loaded.page_numbers:
                    yield _PageRequest(loaded, number, item)
            finally:
                loaded.close()
        else:
            yield Request(item.shown, item.shown, None, item.rel, media=loaded)


def _InputProblem(source: str, cause: str):
    from .errors import InputError

    return InputError(source, cause)


class _PageRequest(Request):
    """A PDF page, rendered only when its media is first needed (never for skipped pages)."""

    def __init__(self, pdf: PdfInput, number: int, item: Item):
        super().__init__(f"{item.shown}#page={number}", item.shown, number, item.rel)
        self._pdf = pdf

    def load(self) -> None:
        if self.media is None and self.error is None:
            try:
                self.media = self._pdf.render(self.page)
            except QwenVLError as exc:
                self.error = exc


# --- sinks ------------------------------------------------------------------


class JsonlSink:
    """JSON Lines to a file or stdout; each record is one flushed, whole line."""

    def __init__(self, path: str | None, resume: bool):
        self.path = path
        self.done: set[str] = set()
        self.fd = None
        if path is None:
            return
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if resume and target.exists():
                self.done = _read_done(target)
                self.fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            else:
                self.fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            raise OutputError(f"{path}: cannot open for writing ({exc.strerror or exc})") from None

    def write(self, record: dict, request: Request) -> None:
        line = render_jsonl(record)
        if self.fd is None:
            sys.stdout.write(line)
            sys.stdout.flush()
            return
        data = line.encode("utf-8")
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as exc:
            try:  # never leave half a line behind
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            raise OutputError(f"{self.path}: cannot write ({exc.strerror or exc})") from None

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _read_done(path: Path) -> set[str]:
    """Keys of successful records; a torn last line (a killed run) is cut off."""
    done: set[str] = set()
    with open(path, "rb+") as fh:
        data = fh.read()
        good_end = 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except ValueError:
                break
            good_end += len(raw)
            if isinstance(record, dict) and record.get("error") is None and "key" in record:
                done.add(record["key"])
        if good_end < len(data):
            fh.truncate(good_end)
    return done


class DirSink:
    """One file per request under --output-dir, each written atomically."""

    def __init__(self, folder: str, fmt: str, resume: bool):
        self.folder = Path(folder)
        self.fmt = fmt
        self.resume = resume
        self.namer = Namer(fmt)
        self.done: set[str] = set()
        self.names: dict[str, str] = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None

    def target(self, request: Request) -> Path:
        if request.key not in self.names:
            self.names[request.key] = self.namer.name(request.rel or request.source, request.page)
        return self.folder / self.names[request.key]

    def is_done(self, request: Request) -> bool:
        return self.resume and self.target(request).exists()

    def write(self, record: dict, request: Request) -> None:
        target = self.target(request)
        if record.get("error") is not None:
            return  # failures are reported on stderr; no result file is made
        atomic_write(target, render(record, self.fmt))
        record["output"] = str(target)

    def close(self) -> None:
        pass


# --- the run ----------------------------------------------------------------


def run_batch(args, log) -> int:
    from .runner import base_record, load_options, open_session, settings_from
    from .prompts import build_messages, resolve_prompt

    t_start = time.perf_counter()
    opts = load_options(args)
    prompt = resolve_prompt(args.task, args.prompt)
    items = expand(args.batch)
    if not items:
        raise UsageError("--batch: no sources given")
    if all(item.error for item in items) and len(items) == 1:
        pass  # reported as an error record below, like any other bad source
    sink = DirSink(args.output_dir, args.format, args.resume) if args.output_dir else JsonlSink(args.output, args.resume)
    session = open_session(args, log)
    settings = settings_from(args)
    bar = _progress(len(items), args.quiet)
    counts = {"ok": 0, "failed": 0, "skipped": 0}

    def finish(request: Request, record: dict) -> None:
        sink.write(record, request)
        if record["error"] is None:
            counts["ok"] += 1
        else:
            counts["failed"] += 1
            _report(bar, log, f"error: {record['error']['message']}")
        bar.update(1)

    def record_for(request: Request) -> dict:
        record = base_record(args, session, prompt)
        record.update(key=request.key, source=request.source, page=request.page, error=None)
        record["inputs"] = [request.media.describe()] if request.media is not None else []
        return record

    def failed(request: Request, exc: QwenVLError) -> dict:
        record = record_for(request)
        record["error"] = {"type": exc.kind, "message": str(exc)}
        return record

    def generate(batch: list[Request]) -> None:
        if not batch:
            return
        conversations = [
            build_messages(prompt, images=[r.media.image], system=args.system,
                           min_pixels=args.min_pixels, max_pixels=args.max_pixels)
            for r in batch
        ]
        t0 = time.perf_counter()
        try:
            results = session.generate(conversations, settings)
        except QwenVLError as exc:
            if len(batch) > 1:  # e.g. out of memory: retry one at a time
                for request in batch:
                    generate([request])
                return
            finish(batch[0], failed(batch[0], exc))
            return
        elapsed = time.perf_counter() - t0
        for request, gen in zip(batch, results):
            record = record_for(request)
            record.update(text=gen.text, finish_reason=gen.finish_reason, usage=gen.usage)
            record["timings"].update(preprocess_s=round(gen.preprocess_s, 3), generate_s=round(gen.generate_s, 3),
                                     total_s=round(elapsed, 3))
            if len(batch) > 1:
                record["timings"]["batch_size"] = len(batch)
            request.media = None  # free the pixels now
            finish(request, record)

    def grow(pages: int) -> None:
        bar.total += pages - 1
        bar.refresh()

    pending: list[Request] = []
    interrupted = False
    try:
        for request in requests_for(items, opts, on_pages=grow):
            done = request.key in sink.done if isinstance(sink, JsonlSink) else sink.is_done(request)
            if done:
                counts["skipped"] += 1
                bar.update(1)
                continue
            if isinstance(request, _PageRequest):
                request.load()
            if request.error is not None:
                finish(request, failed(request, request.error))
                continue
            for note in getattr(request.media, "notes", []):
                _report(bar, log, f"warning: {request.source}: {note}")
            pending.append(request)
            if len(pending) >= args.batch_size:
                generate(pending)
                pending = []
        generate(pending)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        sink.close()
    total = time.perf_counter() - t_start
    where = args.output_dir or args.output or "stdout"
    summary = f"{counts['ok']} done, {counts['failed']} failed"
    if args.resume:
        summary += f", {counts['skipped']} already done (--resume)"
    summary += f" in {total:.1f} s"
    if counts["ok"]:
        summary += f" ({counts['ok'] / total:.2f} requests/s)"
    if interrupted:
        raise Interrupted(f"{summary}; finished results are in {where}; rerun with --resume to continue")
    log(summary)
    return EXIT_FAILURE if counts["failed"] else EXIT_OK


def _report(bar, log, message: str) -> None:
    if message.startswith("error:"):
        bar.write(message, file=sys.stderr)  # errors are shown even with --quiet
    elif not log.quiet:
        bar.write(message, file=sys.stderr)


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True,
                smoothing=0.1, desc="batch")
