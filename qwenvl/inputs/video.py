"""Video: open with PyAV (plain containers only), check the declared size, choose
sample times and decode the frames at those times, downscaled as they are decoded.

Frames are found by seeking (frame_sampling.py): a long video is not decoded
from its start; where seeking cannot serve a file, frames are decoded in order."""
from __future__ import annotations

import io
from fractions import Fraction

from ..errors import InputError
from .common import LoadOptions, Media, failures_as_input_error, short_reason
from .frame_sampling import DecodeStats, FramePicker, SeekFailed, can_seek, sample_by_seeking, sample_sequentially
from .sniff import not_a_video_reason
from .sources import display_name, read_bytes, source_type, stat_file

MAX_FRAME_PIXELS = 2_100_000  # video frames above this (1080p) are downscaled as they are decoded
MAX_VIDEO_PIXELS = 256_000_000  # all sampled video frames together (about 768 MB of RGB)
# Demuxers PyAV may use. Playlist and concat demuxers (hls, dash, concat) would
# open other files and URLs named inside the input, so they are never allowed.
VIDEO_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,mpegvideo,m4v,h264,hevc,flv,asf,ogg,gif,ivf,"
    "mp3,wav,aac,flac"
)
AUDIO_ONLY_DEMUXERS = {"mp3", "wav", "aac", "flac"}


def load_video(src: str, opts: LoadOptions, fps: float, max_frames: int, stdin=None, *, seek: bool = True) -> Media:
    """Decode frames sampled at `fps` (at most `max_frames`, spread evenly) with PyAV.

    Only plain container formats are opened (VIDEO_DEMUXERS): never a playlist
    that would make FFmpeg read other files or URLs. Frames are downscaled as
    they are decoded, so memory stays bounded whatever the video declares.
    `seek=False` decodes every frame from the start (the fallback, kept for
    comparison and benchmarks); the frames are the same either way."""
    shown = display_name(src)
    with failures_as_input_error(shown, "decode the video (try fewer --max-frames)",
                                 "the video is corrupt or cannot be decoded"):
        return _load_video(src, shown, opts, fps, max_frames, stdin, seek)


def _load_video(src: str, shown: str, opts: LoadOptions, fps: float, max_frames: int, stdin,
                seek: bool = True) -> Media:
    if source_type(src) == "file":
        stat_file(src)
        try:
            target = open(src, "rb")  # a file object: FFmpeg never reads the name as a protocol
        except PermissionError:
            raise InputError(shown, "permission denied") from None
        except OSError as exc:
            raise InputError(shown, exc.strerror or str(exc)) from None
        with target:
            head = target.read(4096)
            target.seek(0)
            return _decode_video(target, head, shown, fps, max_frames, opts, seek)
    data = read_bytes(src, opts, stdin=stdin)
    return _decode_video(io.BytesIO(data), data[:4096], shown, fps, max_frames, opts, seek)


def _open(target, shown: str):
    import av

    try:
        return av.open(target, mode="r", options={"format_whitelist": VIDEO_DEMUXERS})
    except av.error.InvalidDataError:
        raise InputError(shown, "not a readable video: corrupt, truncated or an unknown format") from None
    except ValueError:  # av.error.ArgumentError: a demuxer outside VIDEO_DEMUXERS
        raise InputError(shown, "not a supported video format (MP4, MOV, MKV, WebM, AVI, MPEG, ...)") from None
    except Exception as exc:
        raise InputError(shown, f"not a readable video ({short_reason(exc)})") from None


def _decode_video(target, head: bytes, shown: str, fps: float, max_frames: int, opts: LoadOptions,
                  seek: bool = True) -> Media:
    reason = not_a_video_reason(head)
    if reason:
        raise InputError(shown, reason)
    stats = DecodeStats()
    sampled = _sample(target, shown, fps, max_frames, opts, stats, seek)
    if sampled is None:
        # Seeking gave up: start again with a fresh demuxer and decoder, as if it had never been tried.
        target.seek(0)
        sampled = _sample(target, shown, fps, max_frames, opts, stats, seek=False)
    picker, duration, times = sampled
    if not picker.images:
        raise InputError(shown, "the video has no frames")
    return Media(
        shown,
        "video",
        picker.size[0],
        picker.size[1],
        frames=picker.images,
        sample_fps=_effective_fps(times, fps, len(picker.images)),
        duration_s=round(duration, 3) if duration is not None and duration >= 0 else None,
        notes=picker.notes,
        decoding=stats,
    )


def _sample(target, shown: str, fps: float, max_frames: int, opts: LoadOptions, stats: DecodeStats, seek: bool):
    """(picker, duration, sample times), or None when seeking was tried and gave up."""
    container = _open(target, shown)
    picker = None
    try:
        if not container.streams.video:
            audio = bool(container.streams.audio) or container.format.name in AUDIO_ONLY_DEMUXERS
            raise InputError(shown, "the file has no video stream (audio only)" if audio else "the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if width * height > opts.max_image_pixels:
            raise InputError(
                shown, f"the video declares {width}x{height} pixel frames, over the {opts.max_image_pixels:,} pixel limit"
            )
        time_base = stream.time_base or Fraction(1, 1000)
        duration, demuxed = _video_duration(container, stream, time_base)
        if demuxed:
            container.seek(0)
        times = _sample_times(duration, fps, max_frames)
        budget = max(64 * 64, min(MAX_FRAME_PIXELS, MAX_VIDEO_PIXELS // max(1, len(times))))
        picker = FramePicker(shown, budget, stats)
        if seek:
            stats.fallback = can_seek(container)
        if seek and stats.fallback is None:
            try:
                sample_by_seeking(container, stream, times, time_base, picker)
            except SeekFailed as why:
                stats.fallback = str(why)
                return None
        else:
            sample_sequentially(container, stream, times, time_base, fps, picker)
        return picker, duration, times
    except (InputError, MemoryError):
        raise  # MemoryError: load_video's message
    except Exception as exc:
        count = len(picker.images) if picker is not None else 0
        where = f" after {count} frames" if count else ""
        raise InputError(shown, f"the video is corrupt or cannot be decoded{where} ({short_reason(exc)})") from None
    finally:
        container.close()


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
