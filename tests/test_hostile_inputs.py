"""Hostile inputs in single-request mode: each gets one clear line on stderr that
names the input and the cause, exit code 1 (2 for argument problems), never a
traceback, a hang or memory exhaustion. Odd but valid inputs just work.

The files are made by tests/hostile_factory.py in tmp_path; servers run on
127.0.0.1 only (the `http_server` fixture, or a bare socket).
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hostile_factory as hf
from qwenvl import inputs
from qwenvl.errors import InputError
from qwenvl.inputs import LoadOptions, decode_image, images, load_image_source, load_video, sources, video

ROOT = Path(__file__).resolve().parent.parent


def one_error(r, source, *fragments, code=1):
    """The run failed with `code` and exactly one stderr line: error: <source>: <cause>."""
    assert r.code == code, r
    assert "Traceback" not in r.err, r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith(f"error: {source}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert r.out == ""
    return lines[0]


def works(r):
    assert r.code == 0, r
    assert "Traceback" not in r.err and "error:" not in r.err, r.err
    return r


def write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- paths -----------------------------------------------------------------------


def test_missing_file(run_tiny, tmp_path):
    path = tmp_path / "nope.jpg"
    one_error(run_tiny("--image", path), path, "no such file")
    one_error(run_tiny("--video", tmp_path / "nope.mp4"), tmp_path / "nope.mp4", "no such file")


def test_folder_instead_of_file(run_tiny, tmp_path):
    one_error(run_tiny("--image", tmp_path), tmp_path, "is a folder, not a file")
    one_error(run_tiny("--video", tmp_path), tmp_path, "is a folder, not a file")


def test_path_through_a_file(run_tiny, tmp_path):
    afile = write(tmp_path, "a.png", hf.one_pixel_png())
    one_error(run_tiny("--image", afile / "b.png"), afile / "b.png", "no such file")


def test_zero_bytes(run_tiny, tmp_path):
    empty = write(tmp_path, "empty.png", b"")
    one_error(run_tiny("--image", empty), empty, "the file is empty (0 bytes)")
    empty_video = write(tmp_path, "empty.mp4", b"")
    one_error(run_tiny("--video", empty_video), empty_video, "the file is empty (0 bytes)")


def test_fifo_is_refused_without_hanging(run_tiny, tmp_path):
    """A named pipe nobody writes to would block a read forever."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    one_error(run_tiny("--image", fifo), fifo, "is a pipe, not a regular file")
    one_error(run_tiny("--video", fifo), fifo, "is a pipe, not a regular file")
    assert time.monotonic() - t0 < 5


def test_unreadable_file_open_fails(run_tiny, tmp_path, monkeypatch):
    """Permission denied at open() (simulated: the tests may run as root, who can read anything)."""
    path = write(tmp_path, "locked.png", hf.one_pixel_png())
    real_open = open

    def deny(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # Files are opened in two places: sources (images, PDFs) and video (read as a stream).
    monkeypatch.setattr(sources, "open", deny, raising=False)
    monkeypatch.setattr(video, "open", deny, raising=False)
    one_error(run_tiny("--image", path), path, "permission denied")
    one_error(run_tiny("--video", path), path, "permission denied")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_unreadable_file_as_another_user(tmp_path):
    """A real chmod 000 file, read by the real CLI running as `nobody`."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="qwenvl-perm-"))  # tmp_path's parents are 0700
    try:
        folder.chmod(0o755)
        # the CLI runs from a copy here: `nobody` cannot read a checkout under a 0700 folder (mktemp -d)
        shutil.copy(ROOT / "predict.py", folder / "predict.py")
        shutil.copytree(ROOT / "qwenvl", folder / "qwenvl", ignore=shutil.ignore_patterns("__pycache__"))
        secret = folder / "secret.png"
        secret.write_bytes(hf.one_pixel_png())
        secret.chmod(0)
        hidden = folder / "hidden"
        hidden.mkdir(mode=0o700)
        (hidden / "x.png").write_bytes(hf.one_pixel_png())
        for argv, source in (
            (["--image", str(secret)], secret),
            (["--video", str(secret)], secret),
            (["--image", str(hidden / "x.png")], hidden / "x.png"),
        ):
            r = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
                 sys.executable, str(folder / "predict.py"), *argv, "--model", str(folder / "no-model")],
                capture_output=True, text=True, timeout=60, cwd=folder,
                env={"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "HOME": str(folder)},
            )
            assert r.returncode == 1, r
            assert r.stderr.strip() == f"error: {source}: permission denied", r.stderr
    finally:
        for p in folder.rglob("*"):
            p.chmod(0o700 if p.is_dir() else 0o600)
        shutil.rmtree(folder)


def test_nul_byte_in_path(cli):
    r = cli("--image", "photo\x00.png")
    assert r.code == 1 and "Traceback" not in r.err
    assert "not a valid path" in r.err and r.err.count("\n") == 1


def test_local_file_with_a_colon_in_its_name(run_tiny, tmp_path, monkeypatch):
    """'scan:1.png' looks like a URL scheme, but it is a file here."""
    write(tmp_path, "scan:1.png", hf.save(hf.picture(), "PNG"))
    monkeypatch.chdir(tmp_path)
    works(run_tiny("--image", "scan:1.png"))
    one_error(run_tiny("--image", "scan:2.png"), "scan:2.png", "the scan: scheme is not supported")


BROKEN_IMAGES = [
    ("trunc.jpg", hf.truncated_jpeg, "the image data is truncated"),
    ("trunc.png", hf.truncated_png, "the image data is truncated"),
    ("garbled.png", hf.corrupt_png, "the image data is corrupt"),
    ("list.png", hf.text_file, "not a recognised image: it is a text file"),
    ("noise.jpg", hf.binary_noise, "not a recognised image format"),
    ("login.png", hf.html_page, "not a recognised image: it is an HTML page"),
    ("logo.svg", hf.svg, "SVG (vector) images are not supported"),
    ("art.eps", hf.eps, "PostScript/EPS files are not supported"),
    ("iphone.heic", hf.heic_header, "HEIC/HEIF images are not supported"),
    ("empty.gif", hf.gif_zero_frames, "the GIF holds no image (0 frames)"),
    ("lzma.tif", hf.tiff_unknown_compression, "compression scheme 65000, which is not supported"),
    ("doc.pdf", hf.corrupt_pdf, "not a readable PDF: corrupt or truncated"),
    ("half.pdf", hf.truncated_pdf, "not a readable PDF: corrupt or truncated"),
]


@pytest.mark.parametrize("name,make,cause", BROKEN_IMAGES, ids=[b[0] for b in BROKEN_IMAGES])
def test_broken_or_wrong_files(run_tiny, tmp_path, name, make, cause):
    path = write(tmp_path, name, make())
    one_error(run_tiny("--image", path), path, cause)


def test_video_given_as_image(run_tiny, tmp_path):
    path = hf.video(tmp_path / "clip.jpg")
    one_error(run_tiny("--image", path), path, "this is a video, not an image (use --video)")


def test_large_svg_is_refused_quickly(run_tiny, tmp_path):
    path = write(tmp_path, "huge.svg", hf.svg(size_mb=20))
    t0 = time.monotonic()
    one_error(run_tiny("--image", path), path, "SVG (vector) images are not supported")
    assert time.monotonic() - t0 < 5


def test_file_over_the_size_limit(run_tiny, tmp_path):
    path = write(tmp_path, "big.png", hf.save(hf.picture(), "PNG") + bytes(2 * 1024 * 1024))
    one_error(run_tiny("--image", path, "--max-input-mb", "1"), path, "over the 1 MB limit")


# --- images ----------------------------------------------------------------------


def test_decompression_bomb_declared_size(run_tiny, tmp_path):
    """A PNG header declaring 100000x100000 pixels in a few hundred bytes."""
    path = write(tmp_path, "bomb.png", hf.png_declaring(100_000, 100_000, rows=1))
    assert path.stat().st_size < 2000
    t0 = time.monotonic()
    one_error(run_tiny("--image", path), path, "100000x100000", "decompression bomb")
    assert time.monotonic() - t0 < 3


def test_decompression_bomb_thin_strip(run_tiny, tmp_path):
    """5,000,000 x 1 pixels (within the pixel limit, 5 KB on disk): padding it
    for the aspect ratio once asked for a 5000000 x 25000 canvas (125 G pixels)."""
    path = write(tmp_path, "strip.png", hf.png_declaring(5_000_000, 1))
    assert path.stat().st_size < 20_000
    r = works(run_tiny("--image", path, "--format", "json"))
    info = r.json["inputs"][0]
    assert info["width"] * info["height"] <= images.MAX_PADDED_PIXELS
    assert "padded with white" in r.err and "scaled from 5000000x1" in r.err


def test_huge_image_is_reduced_right_after_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_WORKING_PIXELS", 10_000)
    for data in (hf.save(hf.picture((400, 300)), "PNG"), hf.save(hf.picture((400, 300)), "JPEG"),
                 hf.png_declaring(400, 300, color_type=0, depth=16)):
        image, notes = decode_image(data, "big", LoadOptions())
        assert image.mode == "RGB"
        assert image.width * image.height <= 10_000
        assert any("to save memory" in n for n in notes), notes


@pytest.mark.parametrize("size", [(3000, 5), (2, 2000)], ids=["wide", "tall"])
def test_extreme_aspect_ratio_is_padded_and_generates(run_tiny, tmp_path, size):
    path = write(tmp_path, "strip.png", hf.strip_png(*size))
    r = works(run_tiny("--image", path, "--format", "json"))
    assert "is above 200:1: padded with white" in r.err
    rec = r.json
    w, h = rec["inputs"][0]["width"], rec["inputs"][0]["height"]
    assert max(w, h) <= 200 * min(w, h)
    assert rec["usage"]["completion_tokens"] == 8 and rec["text"]


def test_one_pixel_image(run_tiny, tmp_path):
    path = write(tmp_path, "dot.png", hf.one_pixel_png())
    r = works(run_tiny("--image", path, "--format", "json"))
    assert r.json["inputs"][0]["width"] == 1 and r.json["usage"]["completion_tokens"] == 8


def test_animated_gif_says_which_frame(run_tiny, tmp_path):
    path = write(tmp_path, "anim.gif", hf.animated_gif(frames=3))
    r = works(run_tiny("--image", path))
    assert f"warning: {path}: animated image with 3 frames: only the first is used" in r.err


def test_gif_with_100000_frames_is_not_walked_to_the_end():
    t0 = time.monotonic()
    image, notes = decode_image(hf.gif_many_frames(100_000), "many.gif", LoadOptions())
    assert time.monotonic() - t0 < 3
    assert image.size == (1, 1)
    assert notes == ["animated image with more than 1000 frames: only the first is used"]


@pytest.mark.parametrize(
    "name,make",
    [("cmyk.jpg", hf.cmyk_jpeg), ("grey16.png", hf.png_16bit_grey), ("rgb48.png", hf.png_16bit_rgb),
     ("palette.png", hf.palette_transparent_png), ("photo.webp", hf.webp), ("loop.tif", hf.tiff_ifd_loop)],
)
def test_unusual_modes_work(run_tiny, tmp_path, name, make):
    path = write(tmp_path, name, make())
    r = works(run_tiny("--image", path, "--format", "json"))
    assert r.json["inputs"][0]["kind"] == "image"


def test_unusual_modes_keep_their_colours():
    opts = LoadOptions()
    cmyk, _ = decode_image(hf.cmyk_jpeg(), "cmyk", opts)
    assert cmyk.mode == "RGB"
    r, g, b = cmyk.getpixel((80, 50))  # the blue background, not inverted or black
    assert b > 150 and r < 100
    grey, _ = decode_image(hf.png_16bit_grey(), "grey16", opts)
    assert grey.getpixel((0, 0))[0] == 0 and 200 < grey.getpixel((63, 47))[0] < 256
    low, high = grey.convert("L").getextrema()
    assert high - low > 200  # a full ramp, not clipped to white
    rgb48, _ = decode_image(hf.png_16bit_rgb(), "rgb48", opts)
    assert rgb48.getpixel((0, 0)) == (255, 128, 0)
    palette, _ = decode_image(hf.palette_transparent_png(), "palette", opts)
    assert palette.getpixel((0, 0)) == (255, 255, 255)  # transparent: white, not red
    assert palette.getpixel((20, 20)) == (0, 0, 255)


def test_exif_orientation_out_of_range(run_tiny, tmp_path):
    path = write(tmp_path, "nine.jpg", hf.exif_orientation(9))
    r = works(run_tiny("--image", path, "--format", "json"))
    assert "EXIF orientation 9 is not valid (1-8) and was ignored" in r.err
    assert (r.json["inputs"][0]["width"], r.json["inputs"][0]["height"]) == (96, 64)


def test_corrupt_exif_block(run_tiny, tmp_path):
    path = write(tmp_path, "exif.jpg", hf.corrupt_exif())
    r = works(run_tiny("--image", path))
    assert "the EXIF data is corrupt and was ignored" in r.err
    assert "UserWarning" not in r.err  # Pillow's own warning is not passed on


def test_native_decoder_messages_stay_off_stderr(tmp_path):
    """libtiff prints to file descriptor 2 itself; the user still sees one line (a real process)."""
    path = write(tmp_path, "bad.tif", hf.tiff_unknown_compression())
    zstd = write(tmp_path, "zstd.tif", hf.tiff_unknown_compression().replace(
        b"\x03\x01\x03\x00\x01\x00\x00\x00\xe8\xfd", b"\x03\x01\x03\x00\x01\x00\x00\x00\x50\xc3"))
    for source, cause in ((path, "compression scheme 65000"), (zstd, "the image data is corrupt")):
        r = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--image", str(source), "--model", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {source}: "), r.stderr
        assert cause in r.stderr


# --- PDFs ------------------------------------------------------------------------


def test_encrypted_pdf(run_tiny, tmp_path):
    import pypdfium2 as pdfium

    data = hf.encrypted_pdf(user_password=b"secret")
    doc = pdfium.PdfDocument(data, password="secret")  # a real encrypted PDF: opens with its password
    assert len(doc) == 1
    doc.close()
    path = write(tmp_path, "locked.pdf", data)
    one_error(run_tiny("--image", path), path, "the PDF is encrypted with a password")


def test_encrypted_pdf_after_another_pdf_error(run_tiny, tmp_path):
    """PDFium's last-error code is global; a later failure must not inherit 'password'."""
    locked = write(tmp_path, "locked.pdf", hf.encrypted_pdf())
    empty = write(tmp_path, "empty.pdf", hf.pdf_zero_pages())
    one_error(run_tiny("--image", locked), locked, "encrypted")
    one_error(run_tiny("--image", empty), empty, "the PDF has no pages")


def test_pdf_without_pages(run_tiny, tmp_path):
    path = write(tmp_path, "empty.pdf", hf.pdf_zero_pages())
    one_error(run_tiny("--image", path), path, "the PDF has no pages")


def test_pdf_page_range_outside(run_tiny, tmp_path):
    path = write(tmp_path, "three.pdf", hf.pdf_text_pages(3))
    one_error(run_tiny("--image", path, "--pages", "2-5"), path, "page 4 is outside the document (3 pages)")


def test_pdf_page_zero_is_a_usage_error(run_tiny, tmp_path):
    path = write(tmp_path, "three.pdf", hf.pdf_text_pages(3))
    r = run_tiny("--image", path, "--pages", "0")
    assert r.code == 2 and r.err.startswith("error: --pages") and r.err.count("\n") == 1


@pytest.mark.parametrize("make", [hf.pdf_empty_mediabox, hf.pdf_strip_page], ids=["no-mediabox", "strip-page"])
def test_odd_page_geometry_still_works(run_tiny, tmp_path, make):
    path = write(tmp_path, "odd.pdf", make())
    r = works(run_tiny("--image", path, "--format", "json", "--dpi", "72"))
    page = r.json["pages"][0]
    assert page["error"] is None and page["usage"]["completion_tokens"] == 8


def test_many_pages_are_opened_lazily():
    """A 300-page PDF opens without rendering anything; pages come one at a time."""
    pdf = inputs.PdfInput("big.pdf", hf.pdf_text_pages(300), LoadOptions(dpi=18))
    try:
        assert pdf.page_count == 300 and pdf.page_numbers == list(range(1, 301))
        pages = pdf.iter_pages()
        first = next(pages)
        assert first.page == 1 and first.kind == "pdf-page"
        last = pdf.render(300)
        assert last.page == 300 and (last.width, last.height) == (first.width, first.height)
        with pytest.raises(InputError, match="outside the document"):
            pdf.render(301)
    finally:
        pdf.close()


def test_many_pages_end_to_end(run_tiny, tmp_path):
    path = write(tmp_path, "twelve.pdf", hf.pdf_text_pages(12))
    r = works(run_tiny("--image", path, "--format", "json", "--dpi", "18", tokens=1))
    pages = r.json["pages"]
    assert [p["page"] for p in pages] == list(range(1, 13))
    assert all(p["error"] is None for p in pages)


# --- URLs ------------------------------------------------------------------------


def test_url_500(run_tiny, http_server):
    http_server.routes["/boom.png"] = (500, {}, b"oops")
    url = http_server.url + "/boom.png"
    one_error(run_tiny("--image", url), url, "HTTP 500")


def test_url_404(run_tiny, http_server):
    url = http_server.url + "/missing.png"
    one_error(run_tiny("--image", url), url, "HTTP 404")


def test_url_server_never_answers(run_tiny):
    """Accepts the connection (the kernel's backlog) and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
        t0 = time.monotonic()
        one_error(run_tiny("--image", url, "--url-timeout", "1"), url, "no answer within 1 s (--url-timeout)")
        assert time.monotonic() - t0 < 4
    finally:
        listener.close()


def test_url_headers_then_silence(run_tiny, http_server):
    def stall(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "5000")
        handler.end_headers()
        handler.wfile.write(b"\x89PNG")
        handler.wfile.flush()
        time.sleep(4)
        return 200, {}, None

    http_server.routes["/stall.png"] = stall
    url = http_server.url + "/stall.png"
    t0 = time.monotonic()
    one_error(run_tiny("--image", url, "--url-timeout", "1"), url, "no answer within 1 s")
    assert time.monotonic() - t0 < 4


def test_url_connection_refused(run_tiny):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/x.png"
    one_error(run_tiny("--image", url, "--url-timeout", "2"), url, "cannot connect")


def test_url_redirect_loop(run_tiny, http_server):
    http_server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    url = http_server.url + "/loop"
    one_error(run_tiny("--image", url), url, "too many redirects")


def test_url_redirect_to_file_scheme_is_refused(run_tiny, http_server):
    http_server.routes["/sneaky.png"] = (302, {"Location": "file:///etc/passwd"}, b"")
    url = http_server.url + "/sneaky.png"
    one_error(run_tiny("--image", url), url, "not http or https (refused)")


def test_url_endless_body_is_stopped_while_downloading(run_tiny, http_server):
    sent = []

    def endless(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        chunk = b"\0" * 65536
        try:
            while sum(sent) < 1024 * 1024 * 1024:  # a 1 GB stream (a safety stop for the test)
                handler.wfile.write(chunk)
                sent.append(len(chunk))
        except OSError:
            pass
        return 200, {}, None

    http_server.routes["/endless.png"] = endless
    url = http_server.url + "/endless.png"
    t0 = time.monotonic()
    one_error(run_tiny("--image", url, "--max-input-mb", "1"), url, "passed the 1 MB limit and was stopped")
    assert time.monotonic() - t0 < 10
    time.sleep(0.2)
    assert sum(sent) < 64 * 1024 * 1024  # the client hung up long before the end


def test_url_declared_length_over_limit(run_tiny, http_server):
    def huge(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(10 * 1024**3))
        handler.end_headers()
        return 200, {}, None

    http_server.routes["/huge.png"] = huge
    url = http_server.url + "/huge.png"
    one_error(run_tiny("--image", url, "--max-input-mb", "1"), url, "the download is 10240 MB, over the 1 MB limit")


def test_url_gzip_bomb(run_tiny, http_server):
    import gzip

    bomb = gzip.compress(bytes(64 * 1024 * 1024), 9)  # 64 MB of zeros in ~64 KB
    http_server.routes["/bomb.png"] = (200, {"Content-Type": "image/png", "Content-Encoding": "gzip"}, bomb)
    url = http_server.url + "/bomb.png"
    one_error(run_tiny("--image", url, "--max-input-mb", "1"), url, "passed the 1 MB limit")


def test_url_trickle_hits_the_whole_download_deadline(http_server):
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        try:
            for _ in range(200):  # a byte every 0.1 s: each read is well within --url-timeout
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass
        return 200, {}, None

    http_server.routes["/drip.png"] = trickle
    url = http_server.url + "/drip.png"
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"took longer than 1.5 s and was stopped"):
        inputs.fetch_url(url, LoadOptions(url_timeout=1, download_timeout=1.5))
    assert time.monotonic() - t0 < 4
    assert LoadOptions(url_timeout=30).download_deadline() == 300
    assert LoadOptions(url_timeout=1).download_deadline() == 60


def test_url_connection_cut_short(run_tiny, http_server):
    http_server.routes["/short.png"] = (200, {"Content-Type": "image/png", "Content-Length": "100000"}, b"\x89PNG")
    url = http_server.url + "/short.png"
    one_error(run_tiny("--image", url), url, "the server closed the connection early")


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_url_html_instead_of_an_image(run_tiny, http_server, ctype):
    http_server.routes["/photo.jpg"] = (200, {"Content-Type": ctype}, hf.html_page())
    url = http_server.url + "/photo.jpg"
    one_error(run_tiny("--image", url), url, "the server sent an HTML page, not an image")


def test_url_empty_body(run_tiny, http_server):
    http_server.routes["/empty.png"] = (200, {"Content-Type": "image/png"}, b"")
    url = http_server.url + "/empty.png"
    one_error(run_tiny("--image", url), url, "the server sent an empty body")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "FILE:/etc/hostname", "ftp://127.0.0.1/x.png",
                                 "gopher://127.0.0.1/1", "javascript:alert(1)"])
def test_other_schemes_are_refused(run_tiny, url):
    scheme = url.split(":")[0].lower()
    one_error(run_tiny("--image", url), url, f"the {scheme}: scheme is not supported")
    one_error(run_tiny("--video", url), url, f"the {scheme}: scheme is not supported")


@pytest.mark.parametrize("url", ["http://[::1", "http://exa mple.com/x.png", "http://127.0.0.1:99999/x.png"])
def test_malformed_urls(run_tiny, url):
    one_error(run_tiny("--image", url), url, "not a valid URL")


# --- stdin and data: URIs ------------------------------------------------------------


def test_stdin_empty(run_tiny):
    one_error(run_tiny("--image", "-", stdin=b""), "stdin", "no data on standard input")


def test_stdin_garbage(run_tiny):
    one_error(run_tiny("--image", "-", stdin=hf.text_file()), "stdin", "it is a text file")


def test_stdin_over_the_limit(run_tiny):
    one_error(run_tiny("--image", "-", "--max-input-mb", "1", stdin=bytes(1024 * 1024 + 10)), "stdin",
              "more than 1 MB")


def test_stdin_terminal_is_refused(monkeypatch):
    monkeypatch.setattr(sources, "_is_terminal", lambda stream: True)
    with pytest.raises(InputError, match="standard input is a terminal"):
        inputs.read_bytes("-", LoadOptions())


def test_data_uri_broken(run_tiny):
    r = run_tiny("--image", "data:image/png;base64,AAAA" + "A" * 200)
    assert r.code == 1 and r.err.count("\n") == 1
    assert r.err.startswith("error: data:image/png;base64,AAAA") and "..." in r.err  # shortened, not 200 chars
    assert len(r.err) < 300


# --- video -----------------------------------------------------------------------


def test_video_corrupt(run_tiny, tmp_path):
    path = hf.corrupt_video(tmp_path / "bad.mp4")
    one_error(run_tiny("--video", path), path, "not a readable video")


def test_video_truncated(run_tiny, tmp_path):
    path = hf.truncated_video(tmp_path / "cut.mp4", hf.video(tmp_path / "full.mp4", frames=30))
    one_error(run_tiny("--video", path), path, "not a readable video")


def test_video_zero_frames(run_tiny, tmp_path):
    path = hf.zero_frame_video(tmp_path / "none.mp4")
    one_error(run_tiny("--video", path), path, "the video has no frames")


@pytest.mark.parametrize("name", ["voice.m4a", "voice.mp4"])
def test_video_audio_only(run_tiny, tmp_path, name):
    path = hf.audio_only(tmp_path / name)
    one_error(run_tiny("--video", path), path, "the file has no video stream (audio only)")


@pytest.mark.parametrize(
    "name,make,cause",
    [("noise.mp4", hf.binary_noise, "not a readable video"),
     ("notes.mp4", hf.text_file, "not a readable video"),
     ("photo.mp4", lambda: hf.save(hf.picture(), "JPEG"), "this is a JPEG image, not a video (use --image)"),
     ("doc.mp4", lambda: hf.pdf_text_pages(1), "this is a PDF, not a video (use --image)"),
     ("page.mp4", hf.html_page, "this is an HTML file, not a video")],
)
def test_video_wrong_content(run_tiny, tmp_path, name, make, cause):
    path = write(tmp_path, name, make())
    one_error(run_tiny("--video", path), path, cause)


@pytest.mark.parametrize("name", ["list.m3u8", "clip.mp4"])
def test_video_playlist_never_fetches(run_tiny, tmp_path, http_server, name):
    """An HLS playlist would make FFmpeg fetch the URLs (or files) listed inside it."""
    hits = []
    http_server.routes["/segment.ts"] = lambda handler: (hits.append(1), (404, {}, b""))[1]
    path = write(tmp_path, name, hf.hls_playlist(http_server.url + "/segment.ts"))
    one_error(run_tiny("--video", path), path, "playlists (m3u8/HLS) are not supported")
    one_error(run_tiny("--video", "-", stdin=path.read_bytes()), "stdin", "playlists (m3u8/HLS) are not supported")
    # Even past the signature check, FFmpeg's playlist demuxers are not allowed.
    with pytest.raises(InputError):
        video._decode_video(open(path, "rb"), b"", "p", 2.0, 4, LoadOptions())
    time.sleep(0.2)
    assert hits == []


def test_video_resolution_change_mid_stream(tmp_path):
    path = hf.resolution_change_ts(tmp_path / "switch.ts")
    media = load_video(str(path), LoadOptions(), fps=10, max_frames=12)
    sizes = {frame.size for frame in media.frames}
    assert len(media.frames) >= 10 and sizes == {(96, 64)}


def test_video_resolution_change_generates(run_tiny, tmp_path):
    path = hf.resolution_change_ts(tmp_path / "switch.ts")
    r = works(run_tiny("--video", path, "--fps", "10", "--format", "json"))
    assert r.json["inputs"][0]["frames"] >= 10


def test_video_large_frames_are_downscaled_while_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 100 * 100)
    path = hf.video(tmp_path / "big.mp4", frames=4, size=(640, 480))
    media = load_video(str(path), LoadOptions(), fps=10, max_frames=4)
    assert all(f.width * f.height <= 100 * 100 for f in media.frames)
    assert any("downscaled from 640x480" in n for n in media.notes)


def test_video_declared_frame_size_over_the_limit(tmp_path):
    path = hf.video(tmp_path / "v.mp4", frames=2, size=(320, 240))
    with pytest.raises(InputError, match="320x240 pixel frames, over the 1,000 pixel limit"):
        load_video(str(path), LoadOptions(max_image_pixels=1000), fps=2, max_frames=4)


def test_hostile_inputs_never_raise_anything_else(tmp_path):
    """Every generator above, through the library entry points: InputError or a result, nothing else."""
    opts = LoadOptions(max_bytes=8 * 1024 * 1024)
    blobs = [b"", b"\x00", b"%PDF-", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00\x08\x00\x00\x00",
             b"RIFF\x00\x00\x00\x00WEBPVP8 ", hf.truncated_jpeg(), hf.truncated_png(), hf.corrupt_png(),
             hf.text_file(), hf.binary_noise(), hf.svg(), hf.html_page(), hf.eps(), hf.heic_header(),
             hf.gif_zero_frames(), hf.tiff_unknown_compression(), hf.tiff_ifd_loop(), hf.corrupt_exif(),
             hf.corrupt_pdf(), hf.truncated_pdf(), hf.pdf_zero_pages(), hf.encrypted_pdf()]
    data = hf.save(hf.picture((64, 64)), "PNG")
    blobs += [data[:n] for n in range(0, len(data), 7)]  # every truncation of a PNG
    for i, blob in enumerate(blobs):
        path = write(tmp_path, f"blob{i}.bin", blob)
        for call in (lambda: load_image_source(str(path), opts), lambda: load_video(str(path), opts, 2.0, 4)):
            try:
                result = call()
            except InputError as exc:
                assert "\n" not in str(exc) and str(exc).startswith(str(path))
            else:
                if isinstance(result, inputs.PdfInput):
                    for number in result.page_numbers:
                        try:
                            result.render(number)
                        except InputError:
                            pass
                    result.close()


def test_body_is_read_in_pieces_with_old_urllib3():
    """urllib3 1.x has no read1: the download falls back to requests' iter_content."""

    class Response:
        raw = object()

        def iter_content(self, chunk_size):
            yield b"ab"
            yield b"c"

    assert list(sources._body_pieces(Response())) == [b"ab", b"c"]


@pytest.mark.parametrize("failure, message", [
    (MemoryError(), "a.png: not enough memory to decode the image"),
    (ValueError("bad huffman table"), "a.png: the image data is corrupt (bad huffman table)"),
])
def test_decoder_failures_become_one_input_error(monkeypatch, failure, message):
    """Whatever a decoder raises (Pillow, PyAV, pdfium raise many types) is one InputError naming the input."""
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(images, "_decode_image", fail)
    with pytest.raises(InputError) as info:
        inputs.decode_image(b"data", "a.png", inputs.LoadOptions())
    assert str(info.value) == message
    monkeypatch.setattr(video, "_load_video", fail)
    with pytest.raises(InputError) as info:
        inputs.load_video("v.mp4", inputs.LoadOptions(), 1.0, 4)
    assert str(info.value).startswith("v.mp4: " + ("not enough memory to decode the video (try fewer --max-frames)"
                                                 if isinstance(failure, MemoryError) else
                                                 "the video is corrupt or cannot be decoded ("))
