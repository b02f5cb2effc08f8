"""One funnel for every input: local files, URLs, data: URIs, stdin, PDFs, video.

Everything here is pure Python + Pillow/pypdfium2/PyAV/requests (no torch), so
inputs are checked before the model loads. Every failure is an InputError that
names the input and the cause.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import sys
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from .errors import InputError, UsageError

DEFAULT_URL_TIMEOUT = 30.0  # seconds, for connecting and for each read
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # largest file or download accepted
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # declared size above this is a decompression bomb
DEFAULT_DPI = 150
MAX_ASPECT_RATIO = 200  # Qwen3-VL's resize rejects more; wider images are padded
MAX_PAGE_PIXELS = 40_000_000  # a rendered PDF page is scaled down to at most this

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
            text = str(exc).lower()
            if "password" in text:
                raise InputError(source, "the PDF is encrypted with a password") from None
            raise InputError(source, f"not a readable PDF ({exc})") from None
        self.page_count = len(self._doc)
        if self.page_count == 0:
            raise InputError(source, "the PDF has no pages")
        if opts.pages is None:
            self.page_numbers = list(range(1, self.page_count + 1))
        else:
            outside = [p for p in opts.pages if p > self.page_count]
            if outside:
                raise InputError(
                    source,
                    f"page {outside[0]} is outside the document ({self.page_count} page"
                    f"{'s' if self.page_count != 1 else ''})",
                )
            self.page_numbers = list(opts.pages)

    def render(self, number: int) -> Media:
        import pypdfium2 as pdfium

        try:
            page = self._doc[number - 1]
            width_pt, height_pt = page.get_size()
            scale = self.dpi / 72.0
            pixels = width_pt * height_pt * scale * scale
            if pixels > MAX_PAGE_PIXELS:
                scale *= (MAX_PAGE_PIXELS / pixels) ** 0.5
            image = page.render(scale=scale).to_pil().convert("RGB")
            page.close()
        except pdfium.PdfiumError as exc:
            raise InputError(f"{self.source} page {number}", f"cannot render the page ({exc})") from None
        image, notes = _fit_aspect_ratio(image)
        return Media(self.source, "pdf-page", image.width, image.height, image=image, page=number, notes=notes)

    def iter_pages(self) -> Iterator[Media]:
        for number in self.page_numbers:
            yield self.render(number)

    def close(self) -> None:
        self._doc.close()


# --- sources ---------------------------------------------------------------


def redact(source: str) -> str:
    """Remove user:password@ from a URL, so credentials never reach outputs or logs."""
    if "://" not in source:
        return source
    try:
        parts = urlsplit(source)
    except ValueError:
        return source
    if parts.username is None and parts.password is None:
        return source
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


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
        raise InputError(redact(src), f"the {scheme}: scheme is not supported (use a local path, http(s) URL or data: URI)")
    return "file"


def read_bytes(src: str, opts: LoadOptions, stdin=None) -> bytes:
    kind = source_type(src)
    if kind == "stdin":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read(opts.max_bytes + 1)
        if len(data) > opts.max_bytes:
            raise InputError("stdin", f"more than {_mb(opts.max_bytes)} of data")
        if not data:
            raise InputError("stdin", "no data on standard input")
        return data
    if kind == "data":
        return _decode_data_uri(src)
    if kind == "url":
        return fetch_url(src, opts)
    return _read_file(src, opts)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def _read_file(path: str, opts: LoadOptions) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a folder, not a file")
    if st.st_size == 0:
        raise InputError(path, "the file is empty (0 bytes)")
    if st.st_size > opts.max_bytes:
        raise InputError(path, f"the file is {_mb(st.st_size)}, over the {_mb(opts.max_bytes)} limit")
    try:
        with open(path, "rb") as fh:
            return fh.read(opts.max_bytes + 1)
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None


def _decode_data_uri(src: str) -> bytes:
    shown = src[:40] + ("..." if len(src) > 40 else "")
    header, sep, payload = src.partition(",")
    if not sep:
        raise InputError(shown, "malformed data: URI (no comma)")
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise InputError(shown, "the data: URI is not valid base64") from None
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    if not data:
        raise InputError(shown, "the data: URI holds no data")
    return data


def fetch_url(url: str, opts: LoadOptions) -> bytes:
    import requests

    shown = redact(url)
    session = requests.Session()
    session.max_redirects = 10
    try:
        with session.get(url, stream=True, timeout=(opts.url_timeout, opts.url_timeout)) as response:
            if response.status_code >= 400:
                raise InputError(shown, f"HTTP {response.status_code} {response.reason or ''}".strip())
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype.startswith("text/html"):
                raise InputError(shown, "the server sent an HTML page, not an image, PDF or video")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > opts.max_bytes:
                raise InputError(shown, f"the download is {_mb(int(declared))}, over the {_mb(opts.max_bytes)} limit")
            chunks, total = [], 0
            for chunk in response.iter_content(chunk_size=65536):
                total += len(chunk)
                if total > opts.max_bytes:
                    raise InputError(shown, f"the download is over the {_mb(opts.max_bytes)} limit (stopped)")
                chunks.append(chunk)
    except requests.exceptions.TooManyRedirects:
        raise InputError(shown, "too many redirects (a redirect loop?)") from None
    except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout):
        raise InputError(shown, f"no answer within {opts.url_timeout:g} s (--url-timeout)") from None
    except requests.exceptions.ConnectionError as exc:
        raise InputError(shown, f"cannot connect ({_short(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise InputError(shown, f"download failed ({_short(exc)})") from None
    data = b"".join(chunks)
    if not data:
        raise InputError(shown, "the server sent an empty body")
    return data


def _short(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"\[Errno [^\]]+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


# --- images ----------------------------------------------------------------


def is_pdf(data: bytes) -> bool:
    return data[:1024].lstrip().startswith(b"%PDF")


def _looks_like_video(data: bytes) -> bool:
    head = data[:64]
    return head[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3") or head[8:12] == b"AVI "


def decode_image(data: bytes, source: str, opts: LoadOptions):
    """Bytes to an upright RGB PIL image, or an InputError naming the cause."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # we check the declared size ourselves, below
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if _looks_like_video(data):
            raise InputError(source, "this is a video, not an image (use --video)") from None
        raise InputError(source, "not a recognised image format (or the file is corrupt)") from None
    except Exception as exc:  # Pillow raises many types for broken headers
        raise InputError(source, f"cannot read the image ({_short(exc)})") from None
    width, height = image.size
    if width * height > opts.max_image_pixels:
        raise InputError(
            source,
            f"the image declares {width}x{height} pixels, over the {opts.max_image_pixels:,} pixel limit "
            "(a decompression bomb?)",
        )
    if width < 1 or height < 1:
        raise InputError(source, f"the image has no pixels ({width}x{height})")
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated image with {frames} frames: frame 1 is used")
    try:
        image.seek(0)
        image.load()
    except Exception as exc:
        raise InputError(source, f"the image data is truncated or corrupt ({_short(exc)})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:
        notes.append("the EXIF orientation could not be read and was ignored")
    image = to_rgb(image)
    image, pad_notes = _fit_aspect_ratio(image)
    return image, notes + pad_notes


def to_rgb(image):
    """Any mode to RGB: alpha composited on white, 16-bit scaled, CMYK/palette converted."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype("uint8"), mode="L")
    elif image.mode == "F":
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else array * 0
        image = Image.fromarray(scaled.astype("uint8"), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA") or (image.mode == "L" and "transparency" in image.info):
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
    """Pad with white so the long side is at most MAX_ASPECT_RATIO times the short one."""
    from PIL import Image

    width, height = image.size
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return image, []
    if width > height:
        new_size = (width, -(-width // MAX_ASPECT_RATIO))
    else:
        new_size = (-(-height // MAX_ASPECT_RATIO), height)
    canvas = Image.new("RGB", new_size, (255, 255, 255))
    canvas.paste(image, (0, 0))
    note = (
        f"aspect ratio {max(width, height) / min(width, height):.0f}:1 is above {MAX_ASPECT_RATIO}:1: "
        f"padded with white to {new_size[0]}x{new_size[1]}"
    )
    return canvas, [note]


def load_image_source(src: str, opts: LoadOptions, stdin=None) -> Media | PdfInput:
    """Read one --image source: an image becomes a Media, a PDF a PdfInput."""
    shown = redact(src) if src != "-" else "stdin"
    data = read_bytes(src, opts, stdin=stdin)
    if is_pdf(data):
        return PdfInput(shown, data, opts)
    image, notes = decode_image(data, shown, opts)
    return Media(shown, "image", image.width, image.height, image=image, notes=notes)


# --- video -----------------------------------------------------------------


def load_video(src: str, opts: LoadOptions, fps: float, max_frames: int, stdin=None) -> Media:
    """Decode frames sampled at `fps` (at most `max_frames`, spread evenly) with PyAV."""
    import av

    shown = redact(src) if src != "-" else "stdin"
    if source_type(src) == "file":
        _read_file_check(src, opts)
        target = src
    else:
        target = io.BytesIO(read_bytes(src, opts, stdin=stdin))
    try:
        container = av.open(target)
    except Exception as exc:
        raise InputError(shown, f"not a readable video ({_short(exc)})") from None
    try:
        if not container.streams.video:
            raise InputError(shown, "the file has no video stream (audio only?)")
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1000)
        duration, demuxed = _video_duration(container, stream, time_base)
        if demuxed:
            container.seek(0)
        times = _sample_times(duration, fps, max_frames)
        frames, width, height = [], 0, 0
        idx = 0
        last = None
        for frame in container.decode(stream):
            t = float(frame.pts * time_base) if frame.pts is not None else (len(frames) / fps)
            last = frame
            while idx < len(times) and t + 1e-6 >= times[idx]:
                image = frame.to_image()
                frames.append(image)
                width, height = image.size
                idx += 1
            if idx >= len(times):
                break
        if not frames and last is not None:
            image = last.to_image()
            frames.append(image)
            width, height = image.size
    except InputError:
        raise
    except Exception as exc:
        raise InputError(shown, f"the video is corrupt or cannot be decoded ({_short(exc)})") from None
    finally:
        container.close()
    if not frames:
        raise InputError(shown, "the video has no frames")
    return Media(
        shown,
        "video",
        width,
        height,
        frames=frames,
        sample_fps=_effective_fps(times, fps, len(frames)),
        duration_s=round(duration, 3) if duration is not None else None,
    )


def _read_file_check(path: str, opts: LoadOptions) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a folder, not a file")
    if st.st_size == 0:
        raise InputError(path, "the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")


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
