"""Video frames are reached by seeking to each sample time; the frames are the
ones decoding every frame in order picks, and far fewer frames are decoded.

The videos are made in tmp_path by tests/media_factory.py. `Media.decoding`
counts the frames the decoder produced (and the seeks), so the tests count
work, not time (bench/video_seek.py measures the time on a two-hour video)."""
from __future__ import annotations

from pathlib import Path

import av
import pytest

import hostile_factory as hf
import media_factory as mf
from qwenvl.errors import InputError
from qwenvl.inputs import LoadOptions, frame_sampling, load_video

ROOT = Path(__file__).resolve().parent.parent
X264 = "libx264" in av.codecs_available

# (file name, encoder settings): the containers seeking is used for, keyframe
# intervals from every frame to 2 s, with and without B-frames.
VIDEOS = [
    ("mpeg4.mp4", dict(codec="mpeg4", gop=12)),
    ("mpeg4.avi", dict(codec="mpeg4", fmt="avi", gop=25)),
    ("intra.mp4", dict(codec="mpeg4", gop=1)),
    pytest.param("x264-bframes.mp4", dict(codec="libx264", gop=60, bframes=3),
                 marks=pytest.mark.skipif(not X264, reason="PyAV without libx264")),
    pytest.param("x264-bframes.mkv", dict(codec="libx264", fmt="matroska", gop=45, bframes=2),
                 marks=pytest.mark.skipif(not X264, reason="PyAV without libx264")),
    pytest.param("x264.flv", dict(codec="libx264", fmt="flv", gop=50, bframes=3),
                 marks=pytest.mark.skipif(not X264, reason="PyAV without libx264")),
    pytest.param("vp8.webm", dict(codec="libvpx", fmt="webm", gop=40),
                 marks=pytest.mark.skipif("libvpx" not in av.codecs_available, reason="PyAV without libvpx")),
]
SAMPLINGS = [(2.0, 16), (1.0, 4), (0.5, 3), (10.0, 768), (30.0, 768)]  # (--fps, --max-frames)


def both_ways(path, fps, max_frames):
    opts = LoadOptions()
    return (load_video(str(path), opts, fps, max_frames, seek=True),
            load_video(str(path), opts, fps, max_frames, seek=False))


def assert_same(seeking, sequential):
    assert [f.tobytes() for f in seeking.frames] == [f.tobytes() for f in sequential.frames]
    assert seeking.describe() == sequential.describe()  # sizes, frame count, sample_fps, duration, notes
    assert "decoding" not in seeking.describe()  # records are unchanged


@pytest.mark.parametrize("fps, max_frames", SAMPLINGS)
def test_sample_mp4_gives_the_same_frames_either_way(fps, max_frames):
    seeking, sequential = both_ways(ROOT / "test_images" / "sample.mp4", fps, max_frames)
    assert_same(seeking, sequential)
    assert seeking.decoding.strategy == "seek" and seeking.decoding.fallback is None
    assert sequential.decoding.strategy == "sequential"


@pytest.mark.parametrize("name, settings", VIDEOS)
def test_generated_videos_give_the_same_frames_either_way(tmp_path, name, settings):
    settings = {"frames": 300, **settings}
    path = mf.encoded_video(tmp_path / name, **settings)
    for fps, max_frames in SAMPLINGS:
        seeking, sequential = both_ways(path, fps, max_frames)
        assert_same(seeking, sequential)
        assert seeking.decoding.strategy == "seek", (fps, max_frames, seeking.decoding)
        assert len(seeking.frames) >= 3


def test_seeking_decodes_a_fraction_of_a_long_video(tmp_path):
    """100 s at 30 fps, a keyframe every second: 8 samples need about 8 keyframe
    intervals of decoding, not the 3000 frames."""
    path = mf.encoded_video(tmp_path / "long.mp4", frames=3000, fps=30, gop=30)
    seeking, sequential = both_ways(path, 1.0, 8)
    assert_same(seeking, sequential)
    assert len(seeking.frames) == 8 and seeking.sample_fps == 0.08
    assert sequential.decoding.decoded > 2600  # the old way: up to the last sample at 87.5 s
    assert seeking.decoding.seeks >= 7
    assert seeking.decoding.decoded <= 8 * 30 + 1  # at most one keyframe interval per sample
    assert seeking.decoding.decoded * 10 < sequential.decoding.decoded


def test_dense_sampling_does_not_seek_back_and_forth(tmp_path):
    """Sample times closer together than the keyframes: decode on, never re-decode a stretch."""
    path = mf.encoded_video(tmp_path / "gop.mp4", frames=300, fps=30, gop=150)
    seeking, sequential = both_ways(path, 2.0, 20)
    assert_same(seeking, sequential)
    assert seeking.decoding.decoded <= sequential.decoding.decoded


def test_transport_stream_is_decoded_in_order(tmp_path):
    """MPEG-TS timestamps may be interpolated by FFmpeg: no seeking, same frames, the reason kept."""
    path = mf.encoded_video(tmp_path / "clip.ts", codec="mpeg2video", fmt="mpegts", frames=150, gop=15)
    seeking, sequential = both_ways(path, 2.0, 8)
    assert_same(seeking, sequential)
    assert seeking.decoding.strategy == "sequential" and seeking.decoding.seeks == 0
    assert "mpegts container's timestamps are not reliable enough to seek" in seeking.decoding.fallback
    switch = hf.resolution_change_ts(tmp_path / "switch.ts")
    assert_same(*both_ways(switch, 10, 12))


def test_a_seek_that_never_lands_falls_back_to_decoding_in_order(tmp_path, monkeypatch):
    """Where seeking cannot reach a keyframe at or before a sample time, the video is
    decoded again from a fresh start: the same frames, and the reason is kept."""
    path = mf.encoded_video(tmp_path / "clip.mp4", frames=600, fps=30, gop=30)
    _, sequential = both_ways(path, 1.0, 8)
    monkeypatch.setattr(frame_sampling._Seeker, "_land", lambda self, target, at: False)
    seeking = load_video(str(path), LoadOptions(), 1.0, 8)
    assert_same(seeking, sequential)
    assert seeking.decoding.strategy == "sequential"
    assert seeking.decoding.fallback.startswith("seeking found no keyframe at or before")
    assert seeking.decoding.seeks >= 1


def test_a_decoder_error_after_a_seek_falls_back_to_decoding_in_order(tmp_path, monkeypatch):
    path = mf.encoded_video(tmp_path / "clip.mp4", frames=600, fps=30, gop=30)
    _, sequential = both_ways(path, 1.0, 8)
    real = frame_sampling._Seeker._seek_to

    def broken(self, target):
        real(self, target)
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(frame_sampling._Seeker, "_seek_to", broken)
    seeking = load_video(str(path), LoadOptions(), 1.0, 8)
    assert_same(seeking, sequential)
    assert seeking.decoding.fallback.startswith("decoding after a seek failed (")


def test_frames_without_timestamps_fall_back(tmp_path, monkeypatch):
    path = mf.encoded_video(tmp_path / "clip.mp4", frames=300, fps=30, gop=30)
    _, sequential = both_ways(path, 1.0, 4)
    monkeypatch.setattr(frame_sampling._Seeker, "_time",
                        lambda self, frame: (_ for _ in ()).throw(frame_sampling.SeekFailed("a frame has no timestamp")))
    seeking = load_video(str(path), LoadOptions(), 1.0, 4)
    assert_same(seeking, sequential)
    assert seeking.decoding.fallback == "a frame has no timestamp"


@pytest.mark.parametrize("name, fmt", [("cut.mkv", "matroska"), ("cut.avi", "avi")])
def test_truncated_videos_fail_or_sample_alike(tmp_path, name, fmt):
    """A file cut short: both ways give the same frames, or the same one-line error."""
    full = mf.encoded_video(tmp_path / f"full-{name}", codec="mpeg4", fmt=fmt, frames=600, gop=30)
    path = tmp_path / name
    path.write_bytes(full.read_bytes()[: full.stat().st_size * 3 // 5])
    outcomes = []
    for seek in (True, False):
        try:
            media = load_video(str(path), LoadOptions(), 1.0, 16, seek=seek)
            outcomes.append([f.tobytes() for f in media.frames])
        except InputError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_limits_hold_when_seeking(tmp_path, monkeypatch):
    """The per-frame pixel budget and the declared-size limit apply to the seeking way too."""
    from qwenvl.inputs import video

    path = mf.encoded_video(tmp_path / "big.mp4", frames=120, fps=30, size=(640, 480), gop=30)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 100 * 100)
    media = load_video(str(path), LoadOptions(), 1.0, 4)
    assert media.decoding.strategy == "seek" and media.decoding.seeks >= 1
    assert all(f.width * f.height <= 100 * 100 for f in media.frames)
    assert any("downscaled from 640x480" in n for n in media.notes)
    with pytest.raises(InputError, match="640x480 pixel frames, over the 1,000 pixel limit"):
        load_video(str(path), LoadOptions(max_image_pixels=1000), 1.0, 4)
