"""Make real media files for the tests: images in many modes, PDFs, videos."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def jpeg(path: Path, size=(320, 240), color=(200, 30, 30), text="HELLO") -> Path:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).text((10, 10), text, fill="white")
    image.save(path, "JPEG", quality=90)
    return path


def png_alpha(path: Path) -> Path:
    """Fully transparent except a black square: composited on white it is mostly white."""
    image = Image.new("RGBA", (200, 100), (255, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((10, 10, 40, 40), fill=(0, 0, 0, 255))
    image.save(path, "PNG")
    return path


def exif_rotated(path: Path) -> Path:
    """Stored 300x100 (landscape) with EXIF orientation 6: shown 100x300 (portrait)."""
    image = Image.new("RGB", (300, 100), (0, 120, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, "JPEG", exif=exif.tobytes())
    return path


def pdf(path: Path, pages: int = 3) -> Path:
    images = []
    for i in range(pages):
        page = Image.new("RGB", (612, 792), "white")
        ImageDraw.Draw(page).text((72, 72), f"Page {i + 1} of the test document", fill="black")
        images.append(page)
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return path


def mp4(path: Path, frames: int = 20, fps: int = 10, size=(160, 120)) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            array[:, :, 0] = (i * 12) % 256
            array[: size[1] // 2, :, 1] = 200
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def image_bytes(fmt: str = "PNG", size=(64, 48), color=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def make_all(folder: Path) -> dict:
    folder = Path(folder)
    return {
        "jpeg": jpeg(folder / "photo.jpg"),
        "jpeg2": jpeg(folder / "second.jpg", size=(256, 256), color=(20, 20, 160), text="WORLD"),
        "png_alpha": png_alpha(folder / "alpha.png"),
        "exif": exif_rotated(folder / "rotated.jpg"),
        "pdf": pdf(folder / "doc.pdf", pages=3),
        "mp4": mp4(folder / "clip.mp4"),
    }


def encoded_video(path: Path, frames: int = 300, fps: int = 30, size=(64, 48), codec: str = "mpeg4",
                  fmt: str | None = None, gop: int = 30, bframes: int = 0) -> Path:
    """A video whose every frame differs (a bar moves, the colour changes each second),
    with a keyframe every `gop` frames; libx264 gets `bframes` B-frames."""
    import av
    import numpy as np

    width, height = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "veryfast",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"}
        for i in range(frames):
            array = np.zeros((height, width, 3), dtype=np.uint8)
            array[:, :, 0] = (i // fps * 40) % 256
            array[:, :, 1] = (i * 7) % 256
            array[: height // 2, i % width, 2] = 255
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
