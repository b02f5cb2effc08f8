"""Images: bytes to an upright RGB PIL image with bounded memory (declared-size
check, reduction right after decoding, EXIF orientation, any mode to RGB,
padding for Qwen3-VL's aspect-ratio limit)."""
from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import tempfile
import warnings

from ..errors import InputError
from .common import LoadOptions, failures_as_input_error, short_reason
from .sniff import sniff_name, unreadable_reason

# Decoders the tool uses. Pillow knows more formats, some with loose signatures
# (TGA, PCX) that turn random bytes into noise, and EPS, which runs Ghostscript.
IMAGE_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF", "JPEG2000", "ICO"]
MAX_ASPECT_RATIO = 200  # Qwen3-VL's resize rejects more; wider images are padded
MAX_WORKING_PIXELS = 40_000_000  # a larger decoded image is reduced to this before any conversion
MAX_PADDED_PIXELS = 20_000_000  # an image padded for its aspect ratio never grows beyond this
MAX_FRAMES_COUNTED = 1000  # GIF and TIFF frames are counted by walking the file: stop here

_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def decode_image(data: bytes, source: str, opts: LoadOptions):
    """Bytes to an upright RGB PIL image, or an InputError naming the cause.

    Memory stays bounded: the declared size is checked before any pixel is
    decoded, very large images are reduced right after decoding (JPEGs while
    decoding), and padding for the aspect ratio never grows an image past
    MAX_PADDED_PIXELS."""
    with failures_as_input_error(source, "decode the image", "the image data is corrupt"):
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
            raise InputError(source, unreadable_reason(data, said[0] if said else "")) from None
        except (SyntaxError, ValueError, OSError, EOFError, struct.error, IndexError, KeyError, TypeError) as exc:
            raise InputError(source, f"the {sniff_name(data)} data is corrupt ({short_reason(exc)})") from None
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
            reason = native.first_line() or short_reason(exc)
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
    image, pad_notes = fit_aspect_ratio(image)
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


def fit_aspect_ratio(image):
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
