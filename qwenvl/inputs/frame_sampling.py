"""Which decoded frames become the video's samples, and how they are reached.

For each sample time T the sample is the first frame (in presentation order)
at or after T. Two ways to find it give the same frames:

- sample_sequentially decodes every frame from the start of the file: simple,
  works on any stream, but `--max-frames 32` over a two-hour video decodes all
  of it.
- sample_by_seeking jumps to the keyframe at or before each T (PyAV's
  container.seek, backward, keyframes only) and decodes forward to T, unless
  T is reachable more cheaply by decoding on from where it already is. A seek
  that does not land where sequential decoding would have been (no timestamps,
  no keyframe at or before T, timestamps going backwards, a decoder or demuxer
  error) raises SeekFailed, and the caller decodes sequentially instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from .common import short_reason

EPSILON = 1e-6  # seconds: a frame at T - EPSILON counts as at T (float timestamps)
# Containers whose frames carry their own timestamps and whose demuxers seek to
# keyframes. Elsewhere FFmpeg may interpolate timestamps, so a frame's time after
# a seek can differ from its time when decoded in order (seen with MPEG-2 in an
# MPEG program stream: other frames were picked), or seeks land on any packet
# (MPEG-TS): those (and raw streams, Ogg, GIF) are decoded in order.
SEEKABLE_DEMUXERS = {"mov", "mp4", "matroska", "webm", "avi", "flv", "ivf"}
BACKOFF_S = (1.0, 4.0, 16.0, 64.0)  # landed after T: seek again this much earlier


class SeekFailed(Exception):
    """Seeking cannot serve this video the way sequential decoding would; the message says why."""


@dataclass
class DecodeStats:
    """How a video's samples were found (Media.decoding): for tests and benchmarks, never in records."""

    strategy: str = "seek"  # "seek" or "sequential"
    decoded: int = 0  # frames the decoder produced, over every attempt
    seeks: int = 0
    fallback: str | None = None  # why seeking was given up, when it was


class FramePicker:
    """Collects the chosen frames as PIL images, all at the size of the first one
    (scaled to fit the per-frame pixel budget)."""

    def __init__(self, shown: str, budget: int, stats: DecodeStats | None = None):
        self.shown = shown
        self.budget = budget
        self.size: tuple[int, int] | None = None
        self.notes: list[str] = []
        self.images: list = []
        self.stats = stats or DecodeStats()

    def take(self, frame) -> None:
        if self.size is None:
            self.size = frame_size(self.shown, frame.width, frame.height, self.budget, self.notes)
        self.images.append(frame_image(frame, self.size))


def frame_size(shown: str, width: int, height: int, budget: int, notes: list[str]) -> tuple[int, int]:
    if width < 1 or height < 1:
        raise InputError(shown, f"the video frames have no pixels ({width}x{height})")
    if width * height <= budget:
        return width, height
    scale = (budget / (width * height)) ** 0.5
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    notes.append(f"frames downscaled from {width}x{height} to {size[0]}x{size[1]} as they were decoded")
    return size


def frame_image(frame, size: tuple[int, int]):
    if (frame.width, frame.height) != size:
        return frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
    return frame.to_image()


def sample_sequentially(container, stream, times: list[float], time_base, fps: float, picker: FramePicker) -> None:
    """Decode from where the container is (its start) to the last sample time."""
    picker.stats.strategy = "sequential"
    idx = 0
    last = None
    for frame in container.decode(stream):
        picker.stats.decoded += 1
        t = float(frame.pts * time_base) if frame.pts is not None else (len(picker.images) / fps)
        last = frame
        while idx < len(times) and t + EPSILON >= times[idx]:
            picker.take(frame)
            idx += 1
        if idx >= len(times):
            break
    if not picker.images and last is not None:
        picker.take(last)


def can_seek(container) -> str | None:
    """None if sample_by_seeking may be tried on this container, else why not."""
    name = container.format.name
    if not set(name.split(",")) & SEEKABLE_DEMUXERS:
        return f"the {name} container's timestamps are not reliable enough to seek"
    return None


def sample_by_seeking(container, stream, times: list[float], time_base, picker: FramePicker) -> None:
    """The same frames as sample_sequentially, reached by seeking; SeekFailed where it cannot."""
    picker.stats.strategy = "seek"
    try:
        _Seeker(container, stream, time_base, picker).run(times)
    except (InputError, MemoryError, SeekFailed):
        raise
    except Exception as exc:  # a demuxer or decoder error after a seek: decoding in order decides
        raise SeekFailed(f"decoding after a seek failed ({short_reason(exc)})") from None


class _Seeker:
    def __init__(self, container, stream, time_base, picker: FramePicker):
        self.container = container
        self.stream = stream
        self.time_base = time_base
        self.picker = picker
        self.stats = picker.stats
        self.frames = None  # the decoder's output since the last seek (or the start)
        self.current = None  # the last frame decoded, and its time
        self.current_t: float | None = None
        self.last_key_t: float | None = None  # the last keyframe decoded since the last seek
        self.gop: float | None = None  # the longest keyframe distance seen, in seconds
        # With B-frames a keyframe is shown later than it is decoded. Samples go by
        # presentation time; an index may list decoding times (MP4), and a demuxer
        # may seek by them. How much later, for each: learnt from the index's first
        # entry and from where each seek lands.
        self.index_shift = 0.0
        self.seek_shift = 0.0

    def run(self, times: list[float]) -> None:
        for target in times:
            if self.current is not None and self.current_t + EPSILON >= target:
                self.picker.take(self.current)  # a frame that covers several sample times
                continue
            if self.frames is None:
                self.frames = iter(self.container.decode(self.stream))  # the start: no seek needed
                if not self._decode_on_to(target):
                    break
                self._learn_index_shift()
                continue
            elif self._worth_seeking(target):
                self._seek_to(target)
            if not self._decode_on_to(target):
                break  # the video ends before `target`, so before every later one too
        if not self.picker.images and self.current is not None:
            self.picker.take(self.current)

    def _time(self, frame) -> float:
        if frame.pts is None:
            raise SeekFailed("a frame has no timestamp")
        return float(frame.pts * self.time_base)

    def _worth_seeking(self, target: float) -> bool:
        """Whether a keyframe lies after the current frame and at or before `target`:
        the container's index says so where it has one (MP4, MOV, most MKV, AVI);
        otherwise the gap must be longer than the longest keyframe distance seen."""
        entries = getattr(self.stream, "index_entries", None)
        # An index built while reading (Matroska before its first seek) ends where reading stopped.
        if entries is not None and len(entries) and float(entries[-1].timestamp * self.time_base) >= target:
            i = entries.search_timestamp(self._pts(target - self.index_shift), backward=True, any_frame=False)
            return i >= 0 and float(entries[i].timestamp * self.time_base) + self.index_shift > self.current_t
        return self.gop is None or target - self.current_t > self.gop

    def _learn_index_shift(self) -> None:
        entries = getattr(self.stream, "index_entries", None)
        if self.last_key_t is not None and entries is not None and len(entries) and entries[0].is_keyframe:
            self.index_shift = max(0.0, self.last_key_t - float(entries[0].timestamp * self.time_base))

    def _pts(self, seconds: float) -> int:
        """`seconds` in the stream's time base, rounded down (a hair of float error forgiven)."""
        return max(0, math.floor((seconds + EPSILON) / self.time_base))

    def _seek_to(self, target: float) -> None:
        """Seek so that decoding resumes at a keyframe at or before `target`."""
        for back in (0.0, *BACKOFF_S):
            at = max(0.0, target - self.seek_shift - back)
            try:
                self.container.seek(self._pts(at), stream=self.stream, backward=True, any_frame=False)
            except Exception as exc:
                raise SeekFailed(f"the container cannot seek ({short_reason(exc)})") from None
            self.stats.seeks += 1
            self.frames = iter(self.container.decode(self.stream))
            if self._land(target, at):
                return
            if at == 0.0:
                break
        raise SeekFailed(f"seeking found no keyframe at or before {target:.3f} s")

    def _land(self, target: float, at: float) -> bool:
        """Decode up to the first keyframe after the seek: True if it is at or before
        `target` (frames before it in output order, which may depend on frames
        before the seek point, are dropped), False if it or anything before it
        is already past `target`, or the video ends first."""
        first = True
        for frame in self.frames:
            self.stats.decoded += 1
            t = self._time(frame)
            if first and frame.key_frame:  # a keyframe indexed at or before `at`, shown at t
                self.seek_shift = max(self.seek_shift, t - at)
            first = False
            if t > target + EPSILON:
                return False
            if not frame.key_frame:
                continue
            if self.current_t is not None and t <= self.current_t:
                # No keyframe between here and `target`: decoding on would have been cheaper.
                self.gop = max(self.gop or 0.0, target - t)
            self._now_at(frame, t)
            self.last_key_t = t
            return True
        return False  # the end, with no keyframe at or before `target` on the way

    def _now_at(self, frame, t: float) -> None:
        self.current, self.current_t = frame, t

    def _decode_on_to(self, target: float) -> bool:
        """Decode forward to the first frame at or after `target` and take it; False at the end."""
        if self.current is not None and self.current_t + EPSILON >= target:
            self.picker.take(self.current)
            return True
        for frame in self.frames:
            self.stats.decoded += 1
            t = self._time(frame)
            if self.current is not None and t < self.current_t:
                raise SeekFailed("frame timestamps go backwards")
            if frame.key_frame:
                if self.last_key_t is not None and t > self.last_key_t:
                    self.gop = max(self.gop or 0.0, t - self.last_key_t)
                self.last_key_t = t
            self._now_at(frame, t)
            if t + EPSILON >= target:
                self.picker.take(frame)
                return True
        return False
