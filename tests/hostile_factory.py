"""Generators of hostile inputs: broken, huge-declaring, odd-mode and malicious files.

Every function returns bytes (or writes a file and returns its path) and needs
nothing beyond Pillow, numpy and PyAV: PNG bombs and PDFs are written by hand,
including an RC4-encrypted PDF (PDF 1.4 standard security handler, revision 2),
since the tool's own PDF library cannot encrypt.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

# --- images ------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, rows: int | None = None, color_type: int = 0, depth: int = 8) -> bytes:
    """A valid PNG header declaring width x height; only `rows` rows of (zero) data follow.

    rows=None writes every row: a real image that compresses ~1000:1 (a bomb
    whose declared size is honest)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = b"\x00" + bytes(width * channels * depth // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def picture(size=(96, 64), mode="RGB") -> Image.Image:
    image = Image.new("RGB", size, (30, 120, 200))
    ImageDraw.Draw(image).rectangle((4, 4, size[0] // 2, size[1] // 2), fill=(250, 200, 0))
    return image.convert(mode)


def truncated_jpeg() -> bytes:
    data = save(picture((256, 256)), "JPEG", quality=95)
    return data[: len(data) // 3]


def truncated_png() -> bytes:
    data = save(Image.effect_noise((128, 128), 64).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    """A good header and a garbled IDAT (CRC and zlib errors)."""
    data = bytearray(save(picture(), "PNG"))
    start = data.index(b"IDAT") + 8
    for i in range(start, min(start + 40, len(data) - 12)):
        data[i] ^= 0x5A
    return bytes(data)


def text_file() -> bytes:
    return b"This is a shopping list, not a picture.\neggs\nmilk\n" * 20


def binary_noise(n: int = 4096) -> bytes:
    import random

    rng = random.Random(5)
    data = bytes(rng.randrange(256) for _ in range(n))
    return b"\x00\x13" + data[2:]  # no accidental image signature


def svg(size_mb: float = 0.0) -> bytes:
    body = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000">\n'
    filler = b'<rect x="1" y="1" width="99998" height="99998" fill="red"/>\n'
    body += filler * max(1, int(size_mb * 1024 * 1024 / len(filler)))
    return body + b"</svg>\n"


def html_page() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><p>Please log in</p></body></html>\n"


def eps() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\n%%EOF\n"


def heic_header() -> bytes:
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + bytes(200)


def animated_gif(frames: int = 3) -> bytes:
    images = [Image.new("P", (48, 32), color=i * 40) for i in range(frames)]
    for i, im in enumerate(images):
        ImageDraw.Draw(im).rectangle((i * 8, 4, i * 8 + 6, 20), fill=255)
    return save(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def gif_many_frames(count: int = 100_000) -> bytes:
    """A 1x1 GIF with `count` frames of 23 bytes each: counting them all is the attack."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = (b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
             + b"\x02\x02\x44\x01\x00")
    return head + frame * count + b";"


def gif_zero_frames() -> bytes:
    """Header, logical screen 10x10, global colour table, trailer: no image at all."""
    return b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0x80, 0, 0) + bytes(6) + b";"


def cmyk_jpeg() -> bytes:
    return save(picture(mode="CMYK"), "JPEG", quality=90)


def png_16bit_grey() -> bytes:
    import numpy as np

    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return save(Image.fromarray(ramp), "PNG")  # mode I;16


def png_16bit_rgb() -> bytes:
    """Colour type 2, bit depth 16, written by hand (Pillow cannot write it)."""
    w, h = 32, 24
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    row = b"\x00" + (struct.pack(">HHH", 65535, 32768, 0) * w)
    data = zlib.compress(row * h)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def palette_transparent_png() -> bytes:
    image = Image.new("P", (64, 48), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(image).rectangle((8, 8, 30, 30), fill=1)
    return save(image, "PNG", transparency=0)


def one_pixel_png() -> bytes:
    return save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")


def strip_png(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).line((0, 0, width, height), fill=(255, 255, 255))
    return save(image, "PNG")


def tiff_unknown_compression() -> bytes:
    data = bytearray(save(picture(), "TIFF"))
    entry = struct.pack("<HHI", 259, 3, 1)  # Compression, SHORT, count 1
    at = data.index(entry)
    data[at + 8: at + 10] = struct.pack("<H", 65000)  # no such compression scheme
    return bytes(data)


def tiff_ifd_loop() -> bytes:
    """A two-page TIFF whose second IFD points back at the first."""
    data = bytearray(save(picture(), "TIFF", save_all=True, append_images=[picture()]))
    first = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[first: first + 2])[0]
    second = struct.unpack("<I", data[first + 2 + 12 * count: first + 6 + 12 * count])[0]
    count2 = struct.unpack("<H", data[second: second + 2])[0]
    at = second + 2 + 12 * count2
    data[at: at + 4] = struct.pack("<I", first)
    return bytes(data)


def webp() -> bytes:
    return save(picture(), "WEBP", quality=80)


def jpeg_with_exif(exif_bytes: bytes) -> bytes:
    return save(picture(), "JPEG", exif=exif_bytes)


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return jpeg_with_exif(exif.tobytes())


def corrupt_exif() -> bytes:
    """An EXIF block whose IFD claims 65535 entries and points past its end."""
    return jpeg_with_exif(b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01\x03\x00" * 4)


# --- PDFs --------------------------------------------------------------------

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _write_pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """objects[i] is the body of object i+1; object 1 is the catalog."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer_extra, xref)
    return bytes(out)


def _stream(data: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def pdf_text_pages(count: int, size=(612, 792)) -> bytes:
    """A real PDF with `count` pages of vector text (small file, pages render one by one)."""
    font = 3 + 2 * count
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for i in range(count):
        page, content = 3 + 2 * i, 4 + 2 * i
        kids.append(b"%d 0 R" % page)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (size[0], size[1], content, font)
        )
        text = b"BT /F1 24 Tf 72 700 Td (Page %d of %d) Tj ET" % (i + 1, count)
        objects.append(_stream(text))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), count)
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return _write_pdf(objects)


def pdf_zero_pages() -> bytes:
    return _write_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def pdf_empty_mediabox() -> bytes:
    return _write_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 0 0] >>",
    ])


def pdf_strip_page() -> bytes:
    """One page 14400 x 2 points: an extreme aspect ratio straight from the renderer."""
    return _write_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 2] >>",
    ])


def corrupt_pdf() -> bytes:
    """A PDF signature followed by garbage: no objects, no xref, no trailer."""
    return b"%PDF-1.7\n" + binary_noise(2000) + b"\n%%EOF\n"


def truncated_pdf() -> bytes:
    data = pdf_text_pages(3)
    return data[: len(data) // 2]


def encrypted_pdf(user_password: bytes = b"secret", owner_password: bytes = b"owner") -> bytes:
    """One page, RC4 40-bit (V 1, R 2): opening it needs `user_password`."""
    file_id = hashlib.md5(b"qwenvl hostile test").digest()
    permissions = -44  # print and copy refused; any value works
    owner_key = hashlib.md5((owner_password + _PAD)[:32]).digest()[:5]
    o_value = _rc4(owner_key, (user_password + _PAD)[:32])
    key = hashlib.md5((user_password + _PAD)[:32] + o_value + struct.pack("<i", permissions) + file_id).digest()[:5]
    u_value = _rc4(key, _PAD)

    def encrypt(number: int, data: bytes) -> bytes:
        object_key = hashlib.md5(key + struct.pack("<I", number)[:3] + b"\x00\x00").digest()[:10]
        return _rc4(object_key, data)

    content = b"BT /F1 24 Tf 72 700 Td (Secret page) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(encrypt(4, content)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>"
        % (o_value.hex().encode(), u_value.hex().encode(), permissions),
    ]
    ident = file_id.hex().encode()
    return _write_pdf(objects, b"/Encrypt 6 0 R /ID [<%s> <%s>] " % (ident, ident))


# --- video -------------------------------------------------------------------


def _encode_video(path: Path, sizes: list[tuple[int, int]], fmt: str | None = None, codec: str = "mpeg4",
                  fps: int = 10, start: int = 0) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuv420p"
        for i, (w, h) in enumerate(sizes):
            array = np.full((h, w, 3), (i * 25) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = start + i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video(path: Path, frames: int = 10, size=(96, 64)) -> Path:
    """A small valid MP4, whatever the name's extension."""
    return _encode_video(path, [size] * frames, fmt="mp4")


def zero_frame_video(path: Path) -> Path:
    """An MP4 with a video track whose sample tables are empty: a stream, no frames.

    (Muxers drop a track that never got a packet, so a one-frame MP4 is patched.)"""
    data = bytearray(video(path, frames=1).read_bytes())
    for box, offset in ((b"stsz", 8), (b"stts", 4), (b"stsc", 4), (b"stco", 4)):
        at = data.index(box) + 4 + offset  # the entry (or sample) count after version/flags
        data[at: at + 4] = bytes(4)
    path.write_bytes(bytes(data))
    return path


def audio_only(path: Path, seconds: float = 0.5) -> Path:
    """An MP4 (.m4a-style) with one AAC audio stream and no video."""
    import av
    import numpy as np

    rate = 22050
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = int(rate * seconds)
        tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)
        step = 1024
        for start in range(0, samples, step):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + step], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncated_video(path: Path, source: Path) -> Path:
    data = Path(source).read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def corrupt_video(path: Path) -> Path:
    """An MP4 signature (ftyp box) followed by garbage."""
    path.write_bytes(struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2" + binary_noise(8000))
    return path


def resolution_change_ts(path: Path) -> Path:
    """Two MPEG-TS segments of different frame sizes, joined byte for byte (as broadcast streams change)."""
    a = _encode_video(path.with_suffix(".a.ts"), [(96, 64)] * 6, fmt="mpegts", codec="mpeg2video")
    b = _encode_video(path.with_suffix(".b.ts"), [(160, 120)] * 6, fmt="mpegts", codec="mpeg2video", start=6)
    path.write_bytes(a.read_bytes() + b.read_bytes())
    return path


def hls_playlist(url: str) -> bytes:
    """A playlist that would make FFmpeg fetch `url` if a playlist demuxer were allowed."""
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{url}\n#EXT-X-ENDLIST\n".encode()
