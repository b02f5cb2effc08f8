"""What kind of data this is, from its first bytes: PDF, image formats, video,
audio, markup. Used to refuse the wrong kind of input with a precise reason."""
from __future__ import annotations

def is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def looks_like_video(data: bytes) -> bool:
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


def looks_like_audio(data: bytes) -> bool:
    head = data[:16]
    return (
        head.startswith(b"ID3")
        or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9")
        or (head[:4] == b"RIFF" and head[8:12] == b"WAVE")
        or head.startswith(b"fLaC")
        or head.startswith(b"OggS")
    )


def sniff_markup(data: bytes) -> str | None:
    """'html' or 'svg' for markup, else None."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        head.startswith(b"<") and b"<html" in head
    ):
        return "html"
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in head):
        return "svg"
    return None


IMAGE_MAGIC = [
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


def unreadable_reason(data: bytes, plugin_said: str = "") -> str:
    """Why Pillow could not identify `data`, as precisely as the first bytes tell."""
    head = data[:64]
    for magic, name in IMAGE_MAGIC:
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
    if looks_like_video(data):
        return "this is a video, not an image (use --video)"
    if looks_like_audio(data):
        return "not a recognised image: it is an audio file"
    markup = sniff_markup(data)
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


def sniff_name(data: bytes) -> str:
    for magic, name in IMAGE_MAGIC:
        if data.startswith(magic):
            return name
    return "image"


def not_a_video_reason(head: bytes) -> str | None:
    if is_pdf(head):
        return "this is a PDF, not a video (use --image)"
    for magic, name in IMAGE_MAGIC:
        if head.startswith(magic) and name != "GIF":
            return f"this is a {name} image, not a video (use --image)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "this is a WebP image, not a video (use --image)"
    markup = sniff_markup(head)
    if markup:
        return f"this is an {markup.upper()} file, not a video"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith(b"#EXTM3U"):
        return "playlists (m3u8/HLS) are not supported: give the video file itself"
    return None
