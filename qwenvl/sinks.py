"""Where result records go: one interface, four sinks.

- `RecordSink`: one record, rendered as txt or json, to stdout or to --output (atomically).
- `JsonlSink`: JSON Lines to stdout or a file; each record is one whole, flushed
  line written as soon as it is done; --resume reads the keys already done and
  cuts off a torn last line.
- `DirSink`: one file per record under --output-dir, each written atomically,
  named after its input; failures get no file.

A sink's `write(record, target)` takes the record and what names it
(`target.key`, `target.rel`, `target.page`: a batch entry), `is_done(target)`
answers --resume, and `close()` ends it.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from .errors import OutputError
from .outputs import atomic_write, render, render_jsonl, write_stdout


class Sink:
    def is_done(self, target) -> bool:
        return False

    def write(self, record: dict, target=None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RecordSink(Sink):
    """A single run's record: stdout, or --output written whole (or left as it was)."""

    def __init__(self, path: str | None, fmt: str):
        self.path = path
        self.fmt = fmt

    def write(self, record: dict, target=None) -> None:
        text = render(record, self.fmt)
        if self.path:
            atomic_write(self.path, text)
        else:
            write_stdout(text, sys.stdout)


class JsonlSink(Sink):
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

    def is_done(self, target) -> bool:
        return target.key in self.done

    def write(self, record: dict, target=None) -> None:
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


class DirSink(Sink):
    """One file per request under --output-dir, each written atomically."""

    def __init__(self, folder: str, fmt: str, resume: bool):
        self.folder = Path(folder)
        self.fmt = fmt
        self.resume = resume
        self.namer = Namer(fmt)
        self.names: dict[str, str] = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None

    def path_for(self, target) -> Path:
        if target.key not in self.names:
            self.names[target.key] = self.namer.name(target.rel or target.source, target.page)
        return self.folder / self.names[target.key]

    def is_done(self, target) -> bool:
        return self.resume and self.path_for(target).exists()

    def write(self, record: dict, target=None) -> None:
        path = self.path_for(target)
        if record.get("error") is not None:
            return  # failures are reported on stderr; no result file is made
        atomic_write(path, render(record, self.fmt))
        record["output"] = str(path)
