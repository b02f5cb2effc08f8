"""Rendering result records, and writing files atomically.

Records are built by pipeline.py and written by the sinks (sinks.py). One
record shape serves every format: `txt` renders its text, `json` the whole
record, `jsonl` one record per line. Files are written atomically (a temporary
file in the same folder, then a rename), so an output file is either complete
or absent.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

from .errors import OutputError

FORMATS = ("txt", "json", "jsonl")


def page_marker(source: str, page: int) -> str:
    return f"--- page {page} of {source} ---"


def display_text(result: dict) -> str:
    """What a txt output shows: parsed objects or data as JSON, else the answer."""
    if result.get("error") is not None:
        return f"[error: {result['error']['message']}]"
    if result.get("data") is not None:
        return json.dumps(result["data"], indent=2, ensure_ascii=False)
    if result.get("objects") is not None:
        return json.dumps(result["objects"], ensure_ascii=False)
    return result.get("text") or ""


def render_txt(record: dict) -> str:
    if record.get("pages"):
        parts = []
        for page in record["pages"]:
            parts.append(page_marker(page["source"], page["page"]))
            parts.append(display_text(page))
        return "\n".join(parts) + "\n"
    return display_text(record) + "\n"


def _utf8_safe(text: str) -> str:
    """Undecodable bytes in file names (surrogate escapes) become \\udcXX escapes: valid UTF-8 JSON."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def render_json(record: dict) -> str:
    return _utf8_safe(json.dumps(record, indent=2, ensure_ascii=False)) + "\n"


def render_jsonl(record: dict) -> str:
    return _utf8_safe(json.dumps(record, ensure_ascii=False)) + "\n"


RENDERERS = {"txt": render_txt, "json": render_json, "jsonl": render_jsonl}


def render(record: dict, fmt: str) -> str:
    return RENDERERS[fmt](record)


def format_for_path(path: str | None) -> str | None:
    """The format implied by an output file's extension, if any."""
    if not path:
        return None
    suffix = Path(path).suffix.lower()
    return {".json": "json", ".jsonl": "jsonl", ".txt": "txt", ".md": "txt"}.get(suffix)


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc)


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` whole, or leave `path` as it was."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` whole (temporary file, fsync, rename), or leave `path` as it was.

    A path that exists and is not a regular file (/dev/stdout, a FIFO) is
    written to directly: it cannot be replaced, and there is nothing to tear.
    """
    target = Path(path)
    if target.exists() and not target.is_file() and not target.is_dir():
        try:
            with open(target, "wb") as fh:
                fh.write(data)
                fh.flush()
        except OSError as exc:
            raise OutputError(f"{target}: cannot write ({_describe_os_error(exc)})") from None
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create the folder {target.parent} ({_describe_os_error(exc)})") from None
    if target.is_dir():
        raise OutputError(f"{target}: is a folder, not a file")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({_describe_os_error(exc)})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image, path: str) -> None:
    """Write an image atomically, its format from the extension (PNG when unknown)."""
    from PIL import Image

    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext, "PNG")
    buf = io.BytesIO()
    try:
        image.save(buf, fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise OutputError(f"{path}: cannot encode the image as {fmt} ({exc})") from None
    atomic_write_bytes(path, buf.getvalue())


class StdoutStream:
    """--stream and --chat: answer text goes to stdout as it is generated; `started` says if any did."""

    def __init__(self):
        self.started = False

    def __call__(self, text: str) -> None:
        self.started = self.started or bool(text)
        write_stdout(text, sys.stdout)

    def end_line(self, always: bool = True) -> None:
        """Close the answer's line (`always=False`: only if some text was written, as after a failure)."""
        if always or self.started:
            write_stdout("\n", sys.stdout)
        self.started = False


def write_stdout(text: str, stream: IO[str]) -> None:
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"stdout: cannot write ({_describe_os_error(exc)})") from None
