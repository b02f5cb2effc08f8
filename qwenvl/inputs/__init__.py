"""One funnel for every input: local files, URLs, data: URIs, stdin, images, PDFs, video.

Everything here is pure Python + Pillow/pypdfium2/PyAV/requests (no torch), so
inputs are checked before the model loads. Every failure is an InputError that
names the input and the cause. This is the front door; the work is done in:

    common.py   limits, LoadOptions, Media, decoder failures as one InputError
    sources.py  source kinds, redaction, files, stdin, data: URIs, URL downloads, JSON files
    sniff.py    what kind of data this is, from its first bytes
    images.py   decoding, EXIF, RGB, memory-bounded reductions, aspect-ratio padding
    pdf.py      PDF pages rendered on demand with pypdfium2; the --pages parser
    video.py    PyAV: open (plain containers only), check, choose the sample times
    frame_sampling.py  reach those frames by seeking, or by decoding in order where seeking cannot
"""
from __future__ import annotations

from .common import (
    DEFAULT_DOWNLOAD_FACTOR,
    DEFAULT_DPI,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_URL_TIMEOUT,
    IMAGE_EXTENSIONS,
    PDF_EXTENSIONS,
    VIDEO_EXTENSIONS,
    LoadOptions,
    Media,
)
from .images import IMAGE_FORMATS, MAX_ASPECT_RATIO, MAX_PADDED_PIXELS, MAX_WORKING_PIXELS, decode_image, to_rgb
from .pdf import MAX_PAGE_PIXELS, PdfInput, parse_pages
from .sniff import is_pdf
from .sources import data_uri, display_name, fetch_url, read_bytes, read_json_file, redact, source_type
from .video import MAX_FRAME_PIXELS, MAX_VIDEO_PIXELS, VIDEO_DEMUXERS, load_video


def load_image_source(src: str, opts: LoadOptions, stdin=None) -> Media | PdfInput:
    """Read one --image source: an image becomes a Media, a PDF a PdfInput."""
    shown = display_name(src)
    data = read_bytes(src, opts, stdin=stdin)
    if is_pdf(data):
        return PdfInput(shown, data, opts)
    image, notes = decode_image(data, shown, opts)
    return Media(shown, "image", image.width, image.height, image=image, notes=notes)


__all__ = [
    "DEFAULT_DOWNLOAD_FACTOR", "DEFAULT_DPI", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_URL_TIMEOUT",
    "IMAGE_EXTENSIONS", "IMAGE_FORMATS", "MAX_ASPECT_RATIO", "MAX_FRAME_PIXELS", "MAX_PADDED_PIXELS",
    "MAX_PAGE_PIXELS", "MAX_VIDEO_PIXELS", "MAX_WORKING_PIXELS", "PDF_EXTENSIONS", "VIDEO_DEMUXERS",
    "VIDEO_EXTENSIONS", "LoadOptions", "Media", "PdfInput", "data_uri", "decode_image", "display_name",
    "fetch_url", "is_pdf", "load_image_source", "load_video", "parse_pages", "read_bytes", "read_json_file",
    "redact", "source_type", "to_rgb",
]
