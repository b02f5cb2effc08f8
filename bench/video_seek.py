#!/usr/bin/env python3
"""Time to sample a long video: seeking to each sample time against decoding in order.

    .venv/bin/python bench/video_seek.py                       # a 2-hour video, --fps 1 --max-frames 32
    .venv/bin/python bench/video_seek.py --hours 1 --fps 2 --max-frames 64
    .venv/bin/python bench/video_seek.py --folder /tmp/videos  # where the generated video is kept

The video is generated once with PyAV (H.264 in MP4, 30 fps, 64x48 pixels, a
keyframe every 250 frames and 3 B-frames, as x264 makes by default) and kept
under --folder (default: the temporary folder), so later runs only time.
Small frames keep the generation fast and make the decoding cost per frame
small: the old way's time here is mostly per-frame overhead, and on real
1080p files it is many times larger, while the seeking way's stays at about
one keyframe interval per sample.

Both ways go through `qwenvl.inputs.load_video` (seek=True: the CLI's way;
seek=False: the sequential fallback, which is how every video was read
before), each --runs times; the best time is printed with the number of
frames decoded, and whether both ways picked identical frames.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def generate(path: Path, seconds: int, rate: int, size: tuple[int, int], gop: int) -> Path:
    """An H.264 MP4 of `seconds` at `rate` fps: a moving bar over a slowly changing colour."""
    import av
    import numpy as np

    partial = path.with_suffix(".partial.mp4")
    width, height = size
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3"}
        base = np.zeros((height, width, 3), dtype=np.uint8)
        for i in range(seconds * rate):
            array = base.copy()
            array[:, :, 0] = (i // rate) % 256  # changes every second
            array[:, :, 1] = (i // (rate * 256)) % 256
            array[:, i % width, 2] = 255  # moves every frame
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)
    return path


def timed(path: Path, fps: float, max_frames: int, seek: bool, runs: int):
    from qwenvl.inputs import LoadOptions, load_video

    best, media = None, None
    for _ in range(runs):
        t0 = time.perf_counter()
        media = load_video(str(path), LoadOptions(), fps, max_frames, seek=seek)
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    return best, media


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="length of the generated video")
    parser.add_argument("--rate", type=int, default=30, help="frames per second of the generated video")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the generated video, in frames")
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate, as the CLI's --fps")
    parser.add_argument("--max-frames", type=int, default=32, help="as the CLI's --max-frames")
    parser.add_argument("--runs", type=int, default=1, help="runs of each way; the best time is shown")
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "qwenvl-bench-video"),
                        help="where the generated video is kept")
    args = parser.parse_args(argv)

    seconds = round(args.hours * 3600)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"long-{seconds}s-{args.rate}fps-64x48-gop{args.gop}.mp4"
    if not path.exists():
        print(f"generating {path} ({seconds * args.rate:,} frames) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        generate(path, seconds, args.rate, (64, 48), args.gop)
        print(f"generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    import av

    print(f"video: {path.name}, {path.stat().st_size / 1e6:.1f} MB, {seconds * args.rate:,} frames; "
          f"PyAV {av.__version__}; sampling --fps {args.fps:g} --max-frames {args.max_frames}")
    seek_s, seek = timed(path, args.fps, args.max_frames, True, args.runs)
    seq_s, seq = timed(path, args.fps, args.max_frames, False, args.runs)
    same = [f.tobytes() for f in seek.frames] == [f.tobytes() for f in seq.frames]
    print(f"{'way':<12} {'time_s':>8} {'frames':>7} {'decoded':>9} {'seeks':>6}")
    for name, elapsed, media in (("seek", seek_s, seek), ("sequential", seq_s, seq)):
        stats = media.decoding
        print(f"{name:<12} {elapsed:>8.2f} {len(media.frames):>7} {stats.decoded:>9,} {stats.seeks:>6}")
    print(f"speed-up {seq_s / seek_s:.0f}x; identical frames: {'yes' if same else 'NO'}"
          + (f"; seeking fell back: {seek.decoding.fallback}" if seek.decoding.fallback else ""))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
