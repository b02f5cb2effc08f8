"""What every input module shares: limits, load options, the Media record, and
one way to turn a decoder's failure into an InputError that names the input."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

from ..errors import InputError

DEFAULT_URL_TIMEOUT = 30.0  # seconds, for connecting and for each read
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # largest file or download accepted
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # declared size above this is a decompression bomb
DEFAULT_DPI = 150
DEFAULT_DOWNLOAD_FACTOR = 10  # a whole download may take 10 x --url-timeout (at least 60 s)

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
    decoding: object = None  # video: how the frames were found (frame_sampling.DecodeStats); not in records

    def describe(self) -> dict:
        info = {"source": self.source, "kind": self.kind, "width": self.width, "height": self.height}
        if self.page is not None:
            info["page"] = self.page
        if self.kind == "video":
            info.update(frames=len(self.frames), sample_fps=self.sample_fps, duration_s=self.duration_s)
        if self.notes:
            info["notes"] = list(self.notes)
        return info


def short_reason(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"\[Errno [^\]]+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    return text.splitlines()[0][:160] if text.strip() else type(exc).__name__


@contextlib.contextmanager
def failures_as_input_error(shown: str, out_of_memory: str, failed: str):
    """Inside: an InputError passes; MemoryError and any other exception (decoders
    raise many types for broken data) become one InputError naming `shown`."""
    try:
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(shown, f"not enough memory to {out_of_memory}") from None
    except Exception as exc:
        raise InputError(shown, f"{failed} ({short_reason(exc)})") from None
