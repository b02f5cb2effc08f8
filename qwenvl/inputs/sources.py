"""Where input bytes come from: source kinds (file, stdin, data: URI, http(s) URL),
credential redaction and display names, local files, standard input, data:
URIs, and URL downloads within a size limit, a read timeout and a deadline.
Also the small JSON file reader (history, schema)."""
from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import sys

from ..errors import InputError
from .common import LoadOptions, short_reason
from .sniff import sniff_markup

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]*@")


def redact(source: str) -> str:
    """Remove user:password@ from a URL, so credentials never reach outputs or logs.

    Works on any text (an error message that quotes a URL, a malformed URL)."""
    if "@" not in source or "://" not in source:
        return source
    return _USERINFO.sub(r"\1", source)


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def source_type(src: str) -> str:
    """'stdin', 'url', 'data' or 'file'; other URL schemes are refused."""
    if src == "-":
        return "stdin"
    if src.startswith("data:"):
        return "data"
    match = _SCHEME.match(src)
    if match and len(match.group(1)) > 1:  # one letter is a Windows drive
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            return "url"
        if "://" not in src and _exists(src):  # a local file named like "notes:1.png"
            return "file"
        raise InputError(redact(src), f"the {scheme}: scheme is not supported (use a local path, http(s) URL or data: URI)")
    return "file"


def _exists(path: str) -> bool:
    try:
        return os.path.lexists(path)
    except (ValueError, OSError):
        return False


def read_bytes(src: str, opts: LoadOptions, stdin=None) -> bytes:
    kind = source_type(src)
    if kind == "stdin":
        if stdin is None and getattr(sys.stdin, "buffer", None) is None:
            raise InputError("stdin", "standard input is closed")
        stream = stdin if stdin is not None else sys.stdin.buffer
        if stdin is None and _is_terminal(sys.stdin):
            raise InputError("stdin", "standard input is a terminal: pipe a file into it (... < photo.jpg)")
        try:
            data = stream.read(opts.max_bytes + 1)
        except OSError as exc:
            raise InputError("stdin", f"cannot read standard input ({exc.strerror or exc})") from None
        if data is None:
            data = b""
        if len(data) > opts.max_bytes:
            raise InputError("stdin", f"more than {_mb(opts.max_bytes)} of data (--max-input-mb)")
        if not data:
            raise InputError("stdin", "no data on standard input")
        return data
    if kind == "data":
        return _decode_data_uri(src, opts)
    if kind == "url":
        return fetch_url(src, opts)
    return _read_file(src, opts)


def _is_terminal(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def stat_file(path: str):
    """os.stat for an input path: a regular file, or an InputError saying why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except NotADirectoryError:
        raise InputError(path, "no such file (a part of the path is not a folder)") from None
    except ValueError:  # an embedded NUL byte
        raise InputError(repr(path), "not a valid path") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        what = "a pipe" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise InputError(path, f"is {what}, not a regular file (use - to read standard input)")
    if st.st_size == 0:
        raise InputError(path, "the file is empty (0 bytes)")
    return st


def _read_file(path: str, opts: LoadOptions) -> bytes:
    st = stat_file(path)
    if st.st_size > opts.max_bytes:
        raise InputError(path, f"the file is {_mb(st.st_size)}, over the {_mb(opts.max_bytes)} limit (--max-input-mb)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(opts.max_bytes + 1)
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, not a file") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    if len(data) > opts.max_bytes:  # it grew while we looked
        raise InputError(path, f"the file is over the {_mb(opts.max_bytes)} limit (--max-input-mb)")
    if not data:
        raise InputError(path, "the file is empty (0 bytes)")
    return data


def display_name(src: str) -> str:
    """How a source is named in records, warnings and errors: no credentials, no megabytes of data: URI."""
    if src == "-":
        return "stdin"
    if src.startswith("data:"):
        return src[:40] + ("..." if len(src) > 40 else "")
    return redact(src)


def _decode_data_uri(src: str, opts: LoadOptions | None = None) -> bytes:
    shown = display_name(src)
    header, sep, payload = src.partition(",")
    if not sep:
        raise InputError(shown, "malformed data: URI (no comma)")
    limit = (opts or LoadOptions()).max_bytes
    if len(payload) // 4 * 3 > limit * 3 + 3:  # percent-encoding can triple a byte
        raise InputError(shown, f"the data: URI holds more than {_mb(limit)} (--max-input-mb)")
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(re.sub(r"\s+", "", payload), validate=False)
        except (binascii.Error, ValueError):
            raise InputError(shown, "the data: URI is not valid base64") from None
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    if not data:
        raise InputError(shown, "the data: URI holds no data")
    if len(data) > limit:
        raise InputError(shown, f"the data: URI holds more than {_mb(limit)} (--max-input-mb)")
    return data


def fetch_url(url: str, opts: LoadOptions) -> bytes:
    """Download an http(s) URL within the size limit, the timeout and a whole-download deadline.

    The body is read as it arrives and dropped the moment it passes the size
    limit, so an endless or huge answer is never read to its end."""
    import time

    import requests

    shown = redact(url)
    deadline = opts.download_deadline()
    t0 = time.monotonic()
    try:
        with requests.Session() as session:
            session.max_redirects = 10
            with session.get(url, stream=True, timeout=(opts.url_timeout, opts.url_timeout)) as response:
                if response.status_code >= 400:
                    raise InputError(shown, f"HTTP {response.status_code} {response.reason or ''}".strip())
                ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype in ("text/html", "application/xhtml+xml"):
                    raise InputError(shown, "the server sent an HTML page, not an image, PDF or video")
                declared = response.headers.get("Content-Length", "").strip()
                if declared.isdigit() and int(declared) > opts.max_bytes:
                    raise InputError(
                        shown, f"the download is {_mb(int(declared))}, over the {_mb(opts.max_bytes)} limit (--max-input-mb)"
                    )
                chunks, total = [], 0
                for chunk in _body_pieces(response):
                    total += len(chunk)
                    if total > opts.max_bytes:
                        raise InputError(shown, f"the download passed the {_mb(opts.max_bytes)} limit and was stopped (--max-input-mb)")
                    chunks.append(chunk)
                    if time.monotonic() - t0 > deadline:
                        raise InputError(
                            shown, f"the download took longer than {deadline:g} s and was stopped "
                            f"({_size(total)} received; --url-timeout)"
                        )
    except InputError:
        raise
    except requests.exceptions.TooManyRedirects:
        raise InputError(shown, "too many redirects (a redirect loop?)") from None
    except requests.exceptions.InvalidSchema:
        raise InputError(shown, "redirected to a URL that is not http or https (refused)") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, ValueError, UnicodeError) as exc:
        raise InputError(shown, f"not a valid URL ({redact(short_reason(exc))})") from None
    except Exception as exc:  # requests, urllib3 and socket errors alike
        if _is_timeout(exc):
            raise InputError(shown, f"no answer within {opts.url_timeout:g} s (--url-timeout)") from None
        if isinstance(exc, requests.exceptions.ConnectionError):
            raise InputError(shown, f"cannot connect ({redact(short_reason(exc))})") from None
        if isinstance(exc, MemoryError):
            raise InputError(shown, "not enough memory for the download") from None
        text = str(exc)
        match = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
        if match:
            got, more = int(match.group(1)), int(match.group(2))
            raise InputError(
                shown, f"the server closed the connection early ({_size(got)} of {_size(got + more)} received)"
            ) from None
        if "Connection broken" in text or "ProtocolError" in type(exc).__name__:
            raise InputError(shown, "the connection broke off during the download") from None
        raise InputError(shown, f"download failed ({redact(short_reason(exc))})") from None
    data = b"".join(chunks)
    if not data:
        raise InputError(shown, "the server sent an empty body")
    if sniff_markup(data) == "html":
        raise InputError(shown, "the server sent an HTML page, not an image, PDF or video")
    return data


def _body_pieces(response):
    """The body as it arrives: read1 returns whatever is there (at most 64 KiB), so
    the size and time checks run as data comes in, not after a full 64 KiB."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2
    if read1 is None:
        yield from response.iter_content(chunk_size=65536)
        return
    while True:
        chunk = read1(65536, decode_content=True)
        if not chunk:
            return
        yield chunk


def _is_timeout(exc: BaseException) -> bool:
    import socket

    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.Timeout, socket.timeout, TimeoutError)):
            return True
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def data_uri(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def read_json_file(path: str, name: str):
    """A small JSON file (a history, a schema), or an InputError naming it and the cause."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(path, f"no such {name} file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the {name} ({getattr(exc, 'strerror', None) or exc})") from None
