"""Batch mode: many inputs, one model load, one result record per image or PDF page.

Sources are expanded into entries (one per image or PDF page, loaded lazily),
grouped --batch-size at a time into requests for the pipeline; each record
goes to the sink (sinks.py) as soon as it is done, so a killed run keeps
everything it finished and `--resume` continues from there.
"""
from __future__ import annotations

import glob as globlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlsplit

from .errors import EXIT_FAILURE, EXIT_OK, InputError, Interrupted, QwenVLError, UsageError
from .inputs import IMAGE_EXTENSIONS, PDF_EXTENSIONS, PdfInput, load_image_source, redact, source_type
from .options import Options
from .pipeline import Request
from .sinks import DirSink, JsonlSink

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
class Entry:
    """One image or PDF page of the batch: what names its record and its output file."""

    key: str  # unique per image or PDF page: the record's identity for --resume
    source: str
    page: int | None
    rel: str
    media: object = None
    error: QwenVLError | None = None

    def identity(self) -> dict:
        return {"key": self.key, "source": self.source, "page": self.page}


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


# --- entries: one per image or PDF page -----------------------------------------


def entries_for(items: list[Item], opts, on_pages=None) -> Iterator[Entry]:
    """Each image, and each PDF page, as an entry; media loaded lazily."""
    for item in items:
        if item.error:
            yield Entry(item.shown, item.shown, None, item.rel, error=InputError(item.shown, item.error))
            continue
        try:
            loaded = load_image_source(item.source, opts)
        except QwenVLError as exc:
            yield Entry(item.shown, item.shown, None, item.rel, error=exc)
            continue
        if isinstance(loaded, PdfInput):
            if on_pages:
                on_pages(len(loaded.page_numbers))
            try:
                for number in loaded.page_numbers:
                    yield _PageEntry(loaded, number, item)
            finally:
                loaded.close()
        else:
            yield Entry(item.shown, item.shown, None, item.rel, media=loaded)


class _PageEntry(Entry):
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


# --- the run ----------------------------------------------------------------


def run_batch(options: Options, log) -> int:
    from .pipeline import Pipeline, open_session

    batch = options.batch
    t_start = time.perf_counter()
    items = expand(list(batch.sources))
    if not items:
        raise UsageError("--batch: no sources given")
    sink = (DirSink(batch.output_dir, options.output.format, batch.resume) if batch.output_dir
            else JsonlSink(options.output.path, batch.resume))
    pipeline = Pipeline(open_session(options.model, log), options)
    bar = _progress(len(items), log.quiet)
    counts = {"ok": 0, "failed": 0, "skipped": 0}

    def finish(entry: Entry, record: dict) -> None:
        sink.write(record, entry)
        if record["error"] is None:
            counts["ok"] += 1
        else:
            counts["failed"] += 1
            message = record["error"]["message"]
            if not message.startswith(entry.source):
                message = f"{entry.source}: {message}"
            _report(bar, log, f"error: {message}")
        bar.update(1)

    def generate(pending: list[Entry]) -> None:
        requests = [Request(images=[e.media], identity=e.identity()) for e in pending]
        for entry in pending:
            entry.media = None  # the request holds the pixels until its record is done
        for entry, result in zip(pending, pipeline.run(requests)):
            finish(entry, result.record)

    def grow(pages: int) -> None:
        bar.total += pages - 1
        bar.refresh()

    pending: list[Entry] = []
    interrupted = False
    try:
        for entry in entries_for(items, options.vision.load_options(), on_pages=grow):
            if sink.is_done(entry):
                counts["skipped"] += 1
                bar.update(1)
                continue
            if isinstance(entry, _PageEntry):
                entry.load()
            if entry.error is not None:
                finish(entry, pipeline.failed(entry.error, Request(identity=entry.identity())).record)
                continue
            for note in getattr(entry.media, "notes", []):
                _report(bar, log, f"warning: {entry.source}: {note}")
            pending.append(entry)
            if len(pending) >= batch.size:
                generate(pending)
                pending = []
        generate(pending)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        sink.close()
    total = time.perf_counter() - t_start
    where = batch.output_dir or options.output.path or "stdout"
    summary = f"{counts['ok']} done, {counts['failed']} failed"
    if batch.resume:
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
