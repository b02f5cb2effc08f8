"""One funnel for every input: local files, URLs, data: URIs, stdin, PDFs, video.

Everything here is pure Python + Pillow/pypdfium2/PyAV/requests (no torch), so
inputs are checked before the model loads. Every failure is an InputError that
names the input and the cause.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import stat
import struct
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator

from .errors import InputError, UsageError

DEFAULT_URL_TIMEOUT = 30.0  # seconds, for connecting and for each read
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # largest file or download accepted
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # declared size above this is a decompression bomb
DEFAULT_DPI = 150
MAX_ASPECT_RATIO = 200  # Qwen3-VL's resize rejects more; wider images are padded
MAX_PAGE_PIXELS = 40_000_000  # a rendered PDF page is scaled down to at most this
MAX_WORKING_PIXELS = 40_000_000  # a larger decoded image is reduced to this before any conversion
MAX_PADDED_PIXELS = 20_000_000  # an image padded for its aspect ratio never grows beyond this
MAX_FRAME_PIXELS = 2_100_000  # video frames above this (1080p) are downscaled as they are decoded
MAX_VIDEO_PIXELS = 256_000_000  # all sampled video frames together (about 768 MB of RGB)
DEFAULT_DOWNLOAD_FACTOR = 10  # a whole download may take 10 x --url-timeout (at least 60 s)

# Decoders the tool uses. Pillow knows more formats, some with loose signatures
# (TGA, PCX) that turn random bytes into noise, and EPS, which runs Ghostscript.
IMAGE_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF", "JPEG2000", "ICO"]
# Demuxers PyAV may use. Playlist and concat demuxers (hls, dash, concat) would
# open other files and URLs named inside the input, so they are never allowed.
VIDEO_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,mpegvideo,m4v,h264,hevc,flv,asf,ogg,gif,ivf,"
    "mp3,wav,aac,flac"
)
AUDIO_ONLY_DEMUXERS = {"mp3", "wav", "aac", "flac"}

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
}
PDF_EXTENSIONS = {".pdf"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpeg", ".mpg"}


@dataclass
class LoadOptions:
    url_timeout: float = DEFAULT_URL_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    dpi: int = DEFAULT_DPI
    pages: list[int] | None = None  # 1-based page numbers; None means all
    download_timeout: float | None = None  # whole download; None: 10 x url_timeout, at least 60 s

    def download_deadline(self) -> float:
        if self.download_timeout is not None:
            return self.download_timeout
        return max(60.0, DEFAULT_DOWNLOAD_FACTOR * self.url_timeout)


@dataclass
class Media:
    """One image the model sees (a picture, a PDF page) or one video."""

    source: str
    kind: str  # "image", "pdf-page" or "video"
    width: int
    height: int
    image: object = None  # PIL.Image.Image for images and pages
    frames: list = field(default_factory=list)  # PIL images for video
    page: int | None = None
    sample_fps: float | None = None
    duration_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        info = {"source": self.source, "kind": self.kind, "width": self.width, "height": self.height}
        if self.page is not None:
            info["page"] = self.page
        if self.kind == "video":
            info.update(frames=len(self.frames), sample_fps=self.sample_fps, duration_s=self.duration_s)
        if self.notes:
            info["notes"] = list(self.notes)
        return info


class PdfInput:
    """An opened PDF; pages are rendered one at a time, on demand."""

    def __init__(self, source: str, data: bytes, opts: LoadOptions):
        import pypdfium2 as pdfium

        self.source = source
        self.dpi = opts.dpi
        try:
            self._doc = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            # PDFium's last-error code can be stale, so the bytes decide.
            if re.search(rb"/Encrypt\s*\d+\s+\d+\s+R|/Encrypt\s*<<", data):
                raise InputError(source, "the PDF is encrypted with a password (decrypt it first)") from None
            if re.search(rb"/Type\s*/Pages\b", data) and not re.search(rb"/Count\s+[1-9]", data):
                raise InputError(source, "the PDF has no pages") from None
            raise InputError(source, f"not a readable PDF: corrupt or truncated ({_pdfium_reason(exc)})") from None
        except Exception as exc:  # pypdfium2 may raise others for odd input
            raise InputError(source, f"not a readable PDF ({_short(exc)})") from None
        try:
            self.page_count = len(self._doc)
        except Exception as exc:
            self._doc.close()
            raise InputError(source, f"not a readable PDF ({_short(exc)})") from None
        if self.page_count <= 0:
            self._doc.close()
            raise InputError(source, "the PDF has no pages")
        if opts.pages is None:
            self.page_numbers = list(range(1, self.page_count + 1))
        else:
            outside = [p for p in opts.pages if p > self.page_count]
            if outside:
                self._doc.close()
                raise InputError(
                    source,
                    f"page {outside[0]} is outside the document ({self.page_count} page"
                    f"{'s' if self.page_count != 1 else ''})",
                )
            self.page_numbers = list(opts.pages)

    def render(self, number: int) -> Media:
        """Render one page (1-based); any failure is an InputError naming the page."""
        shown = f"{self.source} page {number}"
        if not 1 <= number <= self.page_count:
            raise InputError(shown, f"outside the document ({self.page_count} pages)")
        page = None
        try:
            with _failures_as_input_error(shown, "render the page (try a lower --dpi)", "cannot render the page"):
                page = self._doc[number - 1]
                width_pt, height_pt = page.get_size()
                if not (width_pt >= 1 and height_pt >= 1) or max(width_pt, height_pt) > 1e6:
                    raise InputError(shown, f"the page has no usable size ({width_pt:g} x {height_pt:g} points)")
                scale = self.dpi / 72.0
                pixels = width_pt * height_pt * scale * scale
                if pixels > MAX_PAGE_PIXELS:
                    scale *= (MAX_PAGE_PIXELS / pixels) ** 0.5
                # A thin strip would render less than one pixel across: keep at least one.
                scale = max(scale, 1.0 / min(width_pt, height_pt))
                image = page.render(scale=scale).to_pil().convert("RGB")
        finally:
            if page is not None:
                try:
                    page.close()
                except Exception:
                    pass
        image, notes = _fit_aspect_ratio(image)
        return Media(self.source, "pdf-page", image.width, image.height, image=image, page=number, notes=notes)

    def iter_pages(self) -> Iterator[Media]:
        for number in self.page_numbers:
            yield self.render(number)

    def close(self) -> None:
        try:
            self._doc.close()
        except Exception:
            pass


def _pdfium_reason(exc: Exception) -> str:
    match = re.search(r"\(PDFium: ([^)]*)\)", str(exc))
    reason = match.group(1).strip().rstrip(".") if match else _short(exc)
    return "unknown error" if reason.lower() in ("success", "") else reason


# --- sources ---------------------------------------------------------------


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


def _stat_file(path: str):
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
    st = _stat_file(path)
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
        raise InputError(shown, f"not a valid URL ({redact(_short(exc))})") from None
    except Exception as exc:  # requests, urllib3 and socket errors alike
        if _is_timeout(exc):
            raise InputError(shown, f"no answer within {opts.url_timeout:g} s (--url-timeout)") from None
        if isinstance(exc, requests.exceptions.ConnectionError):
            raise InputError(shown, f"cannot connect ({redact(_short(exc))})") from None
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
        raise InputError(shown, f"download failed ({redact(_short(exc))})") from None
    data = b"".join(chunks)
    if not data:
        raise InputError(shown, "the server sent an empty body")
    if _sniff_markup(data) == "html":
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


def _short(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"\[Errno [^\]]+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    return text.splitlines()[0][:160] if text.strip() else type(exc).__name__


@contextlib.contextmanager
def _failures_as_input_error(shown: str, out_of_memory: str, failed: str):
    """Inside: an InputError passes; MemoryError and any other exception (decoders
    raise many types for broken data) become one InputError naming `shown`."""
    try:
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(shown, f"not enough memory to {out_of_memory}") from None
    except Exception as exc:
        raise InputError(shown, f"{failed} ({_short(exc)})") from None


# --- images ----------------------------------------------------------------


def is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _looks_like_video(data: bytes) -> bool:
    head = data[:64]
    if head[4:8] == b"ftyp":
        return head[8:12] not in _HEIF_BRANDS | _AVIF_BRANDS
    return (
        head.startswith(b"\x1aE\xdf\xa3")  # Matroska / WebM
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG program stream
        or (len(head) > 0 and head[0] == 0x47 and data[188:189] == b"\x47")  # MPEG-TS
        or head.startswith(b"FLV\x01")
        or head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")  # ASF / WMV
    )


def _looks_like_audio(data: bytes) -> bool:
    head = data[:16]
    return (
        head.startswith(b"ID3")
        or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9")
        or (head[:4] == b"RIFF" and head[8:12] == b"WAVE")
        or head.startswith(b"fLaC")
        or head.startswith(b"OggS")
    )


def _sniff_markup(data: bytes) -> str | None:
    """'html' or 'svg' for markup, else None."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        head.startswith(b"<") and b"<html" in head
    ):
        return "html"
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in head):
        return "svg"
    return None


_IMAGE_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
]


def _unreadable_reason(data: bytes, plugin_said: str = "") -> str:
    """Why Pillow could not identify `data`, as precisely as the first bytes tell."""
    head = data[:64]
    for magic, name in _IMAGE_MAGIC:
        if head.startswith(magic):
            if name == "GIF" and ("no more images" in plugin_said or not plugin_said):
                return "the GIF holds no image (0 frames) or is corrupt"
            if name == "TIFF" and plugin_said.strip().isdigit():
                return f"the TIFF uses compression scheme {plugin_said.strip()}, which is not supported"
            detail = f" ({plugin_said[:120]})" if plugin_said else ""
            return f"the {name} data is corrupt or truncated{detail}"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "the WebP data is corrupt or truncated"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIC/HEIF images are not supported: convert it to JPEG or PNG"
    if _looks_like_video(data):
        return "this is a video, not an image (use --video)"
    if _looks_like_audio(data):
        return "not a recognised image: it is an audio file"
    markup = _sniff_markup(data)
    if markup == "html":
        return "not a recognised image: it is an HTML page"
    if markup == "svg":
        return "SVG (vector) images are not supported: convert it to PNG"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "PostScript/EPS files are not supported: convert it to PDF or PNG"
    if head.startswith(b"8BPS"):
        return "Photoshop (PSD) files are not supported: export it to PNG or JPEG"
    if head.startswith(b"PK\x03\x04"):
        return "not a recognised image: it is a ZIP archive (or an Office document)"
    sample = data[:2048]
    if sample and b"\x00" not in sample:
        try:
            sample.decode("utf-8")
            return "not a recognised image: it is a text file"
        except UnicodeDecodeError:
            pass
    return "not a recognised image format (JPEG, PNG, GIF, WebP, BMP, TIFF, PNM, AVIF, JPEG 2000, ICO), or the file is corrupt"


_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def decode_image(data: bytes, source: str, opts: LoadOptions):
    """Bytes to an upright RGB PIL image, or an InputError naming the cause.

    Memory stays bounded: the declared size is checked before any pixel is
    decoded, very large images are reduced right after decoding (JPEGs while
    decoding), and padding for the aspect ratio never grows an image past
    MAX_PADDED_PIXELS."""
    with _failures_as_input_error(source, "decode the image", "the image data is corrupt"):
        return _decode_image(data, source, opts)


def _decode_image(data: bytes, source: str, opts: LoadOptions):
    from PIL import Image, UnidentifiedImageError

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.MAX_IMAGE_PIXELS = None  # we check the declared size ourselves, below
        Image.WARN_POSSIBLE_FORMATS = True  # a plugin that knew the signature says why it failed
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            said = [str(w.message).split(" opening failed. ", 1)[-1] for w in caught if "opening failed" in str(w.message)]
            raise InputError(source, _unreadable_reason(data, said[0] if said else "")) from None
        except (SyntaxError, ValueError, OSError, EOFError, struct.error, IndexError, KeyError, TypeError) as exc:
            raise InputError(source, f"the {_sniff_name(data)} data is corrupt ({_short(exc)})") from None
        width, height = image.size
        if width * height > opts.max_image_pixels:
            raise InputError(
                source,
                f"the image declares {width}x{height} pixels, over the {opts.max_image_pixels:,} pixel limit "
                "(a decompression bomb?)",
            )
        if width < 1 or height < 1:
            raise InputError(source, f"the image has no pixels ({width}x{height})")
        frames, more = _frame_count(image)
        if frames > 1:
            what = {"TIFF": "multi-page TIFF", "MPO": "multi-picture JPEG"}.get(image.format or "", "animated image")
            unit = "pages" if image.format == "TIFF" else "frames"
            notes.append(f"{what} with {'more than ' if more else ''}{frames} {unit}: only the first is used")
        if image.format in ("JPEG", "MPO") and width * height > MAX_WORKING_PIXELS:
            factor = (width * height / MAX_WORKING_PIXELS) ** 0.5
            image.draft(image.mode, (int(width / factor) + 1, int(height / factor) + 1))
        try:
            with _quiet_stderr() as native:
                image.seek(0)
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            reason = native.first_line() or _short(exc)
            if "truncated" in reason.lower():
                raise InputError(source, "the image data is truncated (the file ends early)") from None
            raise InputError(source, f"the image data is corrupt ({reason})") from None
        if image.size != (width, height):
            notes.append(f"decoded at {image.width}x{image.height} (from {width}x{height}) to save memory")
        orientation = _exif_orientation(image, notes)  # after load: PNG keeps EXIF after the pixels
        image = _reduce(image, notes, width, height)
        if orientation in _ORIENTATION:
            image = image.transpose(getattr(Image.Transpose, _ORIENTATION[orientation]))
        image = to_rgb(image)
        if any("exif" in str(w.message).lower() for w in caught) and not any("EXIF" in n for n in notes):
            notes.append("the EXIF data is corrupt and was ignored")
    image, pad_notes = _fit_aspect_ratio(image)
    return image, notes + pad_notes


class _NativeOutput:
    """What C libraries (libtiff, libjpeg, FFmpeg) wrote to file descriptor 2 meanwhile."""

    def __init__(self):
        self.text = ""

    def first_line(self) -> str:
        for line in self.text.splitlines():
            if line.strip():
                return line.strip()[:160]
        return ""


@contextlib.contextmanager
def _quiet_stderr():
    """Keep C-level messages off the user's stderr (they are read back for error messages)."""
    native = _NativeOutput()
    saved, tmp = None, None
    try:
        for stream in (sys.stderr, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        tmp = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except (OSError, ValueError):
        if saved is not None:
            os.close(saved)
            saved = None
    try:
        yield native
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            with contextlib.suppress(OSError):
                tmp.seek(0)
                native.text = tmp.read(4096).decode("utf-8", "replace")
        if tmp is not None:
            tmp.close()


def _sniff_name(data: bytes) -> str:
    for magic, name in _IMAGE_MAGIC:
        if data.startswith(magic):
            return name
    return "image"


MAX_FRAMES_COUNTED = 1000  # GIF and TIFF frames are counted by walking the file: stop here


def _frame_count(image) -> tuple[int, bool]:
    """(frames, whether there are more than that). Cheap: a GIF of millions of
    one-pixel frames is not walked to its end just to say how many there are."""
    try:
        if image.format not in ("GIF", "TIFF"):
            return int(getattr(image, "n_frames", 1) or 1), False
        count = 1
        while count <= MAX_FRAMES_COUNTED:
            try:
                image.seek(count)
            except EOFError:
                break
            count += 1
        more = count > MAX_FRAMES_COUNTED
        return min(count, MAX_FRAMES_COUNTED), more
    except Exception:  # a broken later frame does not matter: only the first is used
        return 1, False
    finally:
        with contextlib.suppress(Exception):
            image.seek(0)


def _exif_orientation(image, notes: list[str]) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:
        notes.append("the EXIF data is corrupt and was ignored")
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = -1
    if value not in range(1, 9):
        notes.append(f"the EXIF orientation {value} is not valid (1-8) and was ignored")
        return 1
    return value


def _reduce(image, notes: list[str], width: int, height: int):
    """Shrink an image over MAX_WORKING_PIXELS by an integer factor (box filter)."""
    pixels = image.width * image.height
    if pixels <= MAX_WORKING_PIXELS:
        return image
    factor = int(-(-((pixels / MAX_WORKING_PIXELS) ** 0.5) // 1))
    factor = max(2, factor)
    if image.mode in ("P", "1", "I;16", "I;16L", "I;16B", "I;16N", "PA"):
        image = to_rgb(image) if image.mode in ("P", "PA", "1") else _sixteen_to_l(image)
    reduced = image.reduce(factor)
    notes.append(f"reduced from {width}x{height} to {reduced.width}x{reduced.height} to save memory")
    return reduced


def _sixteen_to_l(image):
    """16-bit (or 32-bit integer) grey to 8-bit, keeping the full range, with little extra memory."""
    import numpy as np
    from PIL import Image

    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        out = (array >> 8).astype(np.uint8)
    else:
        top = int(array.max()) if array.size else 0
        if top > 255:
            out = (array.astype(np.float32) * (255.0 / top)).clip(0, 255).astype(np.uint8)
        else:
            out = array.clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def to_rgb(image):
    """Any mode to RGB: alpha composited on white, 16-bit scaled, CMYK/palette converted."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = _sixteen_to_l(image)
    elif image.mode == "F":
        import numpy as np

        array = np.asarray(image, dtype=np.float32)
        finite = np.isfinite(array)
        low = float(array[finite].min()) if finite.any() else 0.0
        high = float(array[finite].max()) if finite.any() else 0.0
        array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
        scaled = (array - low) * (255.0 / (high - low)) if high > low else array * 0
        image = Image.fromarray(scaled.clip(0, 255).astype("uint8"), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBa":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _fit_aspect_ratio(image):
    """Pad with white so the long side is at most MAX_ASPECT_RATIO times the short one.

    The padded image would hold long_side**2 / MAX_ASPECT_RATIO pixels, so a
    very long strip is first scaled down until that stays within MAX_PADDED_PIXELS."""
    from PIL import Image

    width, height = image.size
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return image, []
    ratio = max(width, height) / min(width, height)
    notes = []
    # longest * ceil(longest / ratio) <= MAX_PADDED_PIXELS
    longest = int((MAX_PADDED_PIXELS * MAX_ASPECT_RATIO) ** 0.5) - MAX_ASPECT_RATIO
    if max(width, height) > longest:
        scale = longest / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
        notes.append(f"scaled from {width}x{height} to {size[0]}x{size[1]} before padding")
        width, height = size
    if width > height:
        new_size = (width, -(-width // MAX_ASPECT_RATIO))
    else:
        new_size = (-(-height // MAX_ASPECT_RATIO), height)
    canvas = Image.new("RGB", new_size, (255, 255, 255))
    canvas.paste(image, (0, 0))
    notes.insert(
        0,
        f"aspect ratio {ratio:.0f}:1 is above {MAX_ASPECT_RATIO}:1: padded with white to {new_size[0]}x{new_size[1]}",
    )
    return canvas, notes


def load_image_source(src: str, opts: LoadOptions, stdin=None) -> Media | PdfInput:
    """Read one --image source: an image becomes a Media, a PDF a PdfInput."""
    shown = display_name(src)
    data = read_bytes(src, opts, stdin=stdin)
    if is_pdf(data):
        return PdfInput(shown, data, opts)
    image, notes = decode_image(data, shown, opts)
    return Media(shown, "image", image.width, image.height, image=image, notes=notes)


# --- video -----------------------------------------------------------------


def load_video(src: str, opts: LoadOptions, fps: float, max_frames: int, stdin=None) -> Media:
    """Decode frames sampled at `fps` (at most `max_frames`, spread evenly) with PyAV.

    Only plain container formats are opened (VIDEO_DEMUXERS): never a playlist
    that would make FFmpeg read other files or URLs. Frames are downscaled as
    they are decoded, so memory stays bounded whatever the video declares."""
    shown = display_name(src)
    with _failures_as_input_error(shown, "decode the video (try fewer --max-frames)",
                                  "the video is corrupt or cannot be decoded"):
        return _load_video(src, shown, opts, fps, max_frames, stdin)


def _load_video(src: str, shown: str, opts: LoadOptions, fps: float, max_frames: int, stdin) -> Media:
    if source_type(src) == "file":
        _stat_file(src)
        try:
            target = open(src, "rb")  # a file object: FFmpeg never reads the name as a protocol
        except PermissionError:
            raise InputError(shown, "permission denied") from None
        except OSError as exc:
            raise InputError(shown, exc.strerror or str(exc)) from None
        with target:
            head = target.read(4096)
            target.seek(0)
            return _decode_video(target, head, shown, fps, max_frames, opts)
    data = read_bytes(src, opts, stdin=stdin)
    return _decode_video(io.BytesIO(data), data[:4096], shown, fps, max_frames, opts)


def _not_a_video_reason(head: bytes) -> str | None:
    if is_pdf(head):
        return "this is a PDF, not a video (use --image)"
    for magic, name in _IMAGE_MAGIC:
        if head.startswith(magic) and name != "GIF":
            return f"this is a {name} image, not a video (use --image)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "this is a WebP image, not a video (use --image)"
    markup = _sniff_markup(head)
    if markup:
        return f"this is an {markup.upper()} file, not a video"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith(b"#EXTM3U"):
        return "playlists (m3u8/HLS) are not supported: give the video file itself"
    return None


def _decode_video(target, head: bytes, shown: str, fps: float, max_frames: int, opts: LoadOptions) -> Media:
    import av

    reason = _not_a_video_reason(head)
    if reason:
        raise InputError(shown, reason)
    try:
        container = av.open(target, mode="r", options={"format_whitelist": VIDEO_DEMUXERS})
    except av.error.InvalidDataError:
        raise InputError(shown, "not a readable video: corrupt, truncated or an unknown format") from None
    except ValueError:  # av.error.ArgumentError: a demuxer outside VIDEO_DEMUXERS
        raise InputError(shown, "not a supported video format (MP4, MOV, MKV, WebM, AVI, MPEG, ...)") from None
    except Exception as exc:
        raise InputError(shown, f"not a readable video ({_short(exc)})") from None
    frames: list = []
    try:
        if not container.streams.video:
            audio = bool(container.streams.audio) or container.format.name in AUDIO_ONLY_DEMUXERS
            raise InputError(shown, "the file has no video stream (audio only)" if audio else "the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if width * height > opts.max_image_pixels:
            raise InputError(
                shown, f"the video declares {width}x{height} pixel frames, over the {opts.max_image_pixels:,} pixel limit"
            )
        time_base = stream.time_base or Fraction(1, 1000)
        duration, demuxed = _video_duration(container, stream, time_base)
        if demuxed:
            container.seek(0)
        times = _sample_times(duration, fps, max_frames)
        budget = max(64 * 64, min(MAX_FRAME_PIXELS, MAX_VIDEO_PIXELS // max(1, len(times))))
        notes: list[str] = []
        size = None  # every frame gets the size of the first one
        idx = 0
        last = None
        for frame in container.decode(stream):
            t = float(frame.pts * time_base) if frame.pts is not None else (len(frames) / fps)
            last = frame
            while idx < len(times) and t + 1e-6 >= times[idx]:
                if size is None:
                    size = _frame_size(shown, frame.width, frame.height, budget, notes)
                frames.append(_frame_image(frame, size))
                idx += 1
            if idx >= len(times):
                break
        if not frames and last is not None:
            size = _frame_size(shown, last.width, last.height, budget, notes)
            frames.append(_frame_image(last, size))
    except (InputError, MemoryError):
        raise  # MemoryError: load_video's message
    except Exception as exc:
        where = f" after {len(frames)} frames" if frames else ""
        raise InputError(shown, f"the video is corrupt or cannot be decoded{where} ({_short(exc)})") from None
    finally:
        container.close()
    if not frames:
        raise InputError(shown, "the video has no frames")
    return Media(
        shown,
        "video",
        size[0],
        size[1],
        frames=frames,
        sample_fps=_effective_fps(times, fps, len(frames)),
        duration_s=round(duration, 3) if duration is not None and duration >= 0 else None,
        notes=notes,
    )


def _frame_size(shown: str, width: int, height: int, budget: int, notes: list[str]) -> tuple[int, int]:
    if width < 1 or height < 1:
        raise InputError(shown, f"the video frames have no pixels ({width}x{height})")
    if width * height <= budget:
        return width, height
    scale = (budget / (width * height)) ** 0.5
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    notes.append(f"frames downscaled from {width}x{height} to {size[0]}x{size[1]} as they were decoded")
    return size


def _frame_image(frame, size: tuple[int, int]):
    if (frame.width, frame.height) != size:
        return frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
    return frame.to_image()


def _video_duration(container, stream, time_base) -> tuple[float | None, bool]:
    """The duration in seconds, and whether packets had to be read to find it."""
    if stream.duration:
        return float(stream.duration * time_base), False
    if container.duration:
        return container.duration / 1_000_000, False
    # No metadata: read packet timestamps (no decoding) to find the end.
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            stop = float((packet.pts + (packet.duration or 0)) * time_base)
            end = stop if end is None else max(end, stop)
    return end, True


def _sample_times(duration: float | None, fps: float, max_frames: int) -> list[float]:
    if not duration or duration <= 0:
        return [i / fps for i in range(max_frames)]
    count = max(1, min(max_frames, int(duration * fps)))
    if count == max_frames and duration * fps > max_frames:
        step = duration / count  # spread evenly over the whole video
    else:
        step = 1.0 / fps
    return [i * step for i in range(count)]


def _effective_fps(times: list[float], fps: float, n: int) -> float:
    if n >= 2 and len(times) >= 2 and times[1] > times[0]:
        return round(1.0 / (times[1] - times[0]), 4)
    return fps


# --- argument helpers --------------------------------------------------------


def parse_pages(spec: str) -> list[int]:
    """'1-3,5' -> [1, 2, 3, 5]; a UsageError for anything else."""
    pages: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise UsageError(f"--pages {spec!r}: expected page numbers like 1-3,5")
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if start < 1 or end < start:
            raise UsageError(f"--pages {spec!r}: pages start at 1 and ranges go upwards")
        if end - start > 100_000:
            raise UsageError(f"--pages {spec!r}: range too large")
        for page in range(start, end + 1):
            if page not in pages:
                pages.append(page)
    return pages


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
