"""VideoFile: random access equals an independent sequential decode, reordering codecs, reuse, bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from robopolicy.data.errors import MissingVideoError
from robopolicy.data.video import DecoderConfig, VideoFile, decode_png
from tests.data.lerobot_fixtures import encode_png, encode_video, frame_image


def _sequential(path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: plain PyAV decode of every frame, sorted by pts -> (times s, uint8 N,C,H,W)."""
    with av.open(str(path)) as c:
        frames = [(f.pts * float(f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    frames.sort(key=lambda x: x[0])
    return np.array([t for t, _ in frames]), np.stack([a for _, a in frames]).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three encodings of the same 60 frames: mpeg4 without and with B-frames, h264 with B-frames."""
    root = tmp_path_factory.mktemp("clips")
    frames = np.stack([frame_image(g) for g in range(60)])
    out = {}
    for name, codec, bf in (("mpeg4", "mpeg4", 0), ("mpeg4_b", "mpeg4", 2), ("h264_b", "libx264", 3)):
        out[name] = root / f"{name}.mp4"
        encode_video(out[name], frames, fps=15, codec=codec, gop=10, bframes=bf)
    return out


@pytest.mark.parametrize("name", ["mpeg4", "mpeg4_b", "h264_b"])
def test_random_access_equals_sequential_decode(clips, name):
    times, ref = _sequential(clips[name])
    with VideoFile(clips[name]) as v:
        assert v.num_frames == 60
        np.testing.assert_allclose(v.times, np.arange(60) / 15, atol=1e-9)
        np.testing.assert_allclose(v.times, times, atol=1e-9)
        rng = np.random.default_rng(0)
        for _ in range(10):  # random batches, with repeats, any order
            idx = rng.integers(0, 60, 12)
            np.testing.assert_array_equal(v.decode(idx), ref[idx])
        # backwards, single frames (forces restarts at keyframes), then the whole file in order
        for f in (59, 0, 31, 30, 9, 10, 58):
            np.testing.assert_array_equal(v.decode([f])[0], ref[f])
        np.testing.assert_array_equal(v.decode_all(), ref)


def test_reordered_stream_really_has_b_frames(clips):
    with av.open(str(clips["h264_b"])) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    assert any(p.pts != p.dts for p in packets)  # otherwise the test above proves nothing about reordering


def test_decoder_continues_forward_instead_of_restarting(clips, monkeypatch):
    v = VideoFile(clips["mpeg4"], DecoderConfig(restart_cost_frames=4))
    keyframes = np.nonzero(v._key)[0]  # no B-frames: decode position == frame number
    assert len(keyframes) >= 4 and keyframes[0] == 0

    def key_before(f):
        return int(keyframes[keyframes <= f][-1])

    restarts = []
    original = v._restart
    monkeypatch.setattr(v, "_restart", lambda pos: (restarts.append(pos), original(pos)))
    f = int(keyframes[1]) + 2
    v.decode([f])
    assert restarts == [key_before(f)]
    v.decode([f + 1])
    v.decode([f + 2, f + 3])
    assert len(restarts) == 1  # close ahead: decoded forward, no re-seek
    v.decode([1])
    assert restarts[1:] == [0]  # behind: restart at the first keyframe
    v.decode([59])
    assert restarts[2:] == [key_before(59)]  # far ahead: restart at the keyframe before it
    v.close()


def test_nearest_reports_distance(clips):
    with VideoFile(clips["mpeg4"]) as v:
        frames, err = v.nearest(np.array([0.0, 1 / 15 + 0.01, 100.0]))
        assert frames.tolist() == [0, 1, 59]
        np.testing.assert_allclose(err, [0.0, 0.01, 100 - 59 / 15], atol=1e-9)


def test_threads_setting_gives_same_frames(clips):
    _, ref = _sequential(clips["h264_b"])
    with VideoFile(clips["h264_b"], DecoderConfig(threads=2)) as v:
        idx = np.array([3, 40, 41, 7, 59])
        np.testing.assert_array_equal(v.decode(idx), ref[idx])


def test_missing_file(tmp_path):
    with pytest.raises(MissingVideoError, match="video file not found"):
        VideoFile(tmp_path / "nope.mp4")


def test_truncated_file_moov_at_end(tmp_path, clips):
    """A cut-off recording (the index atom is written last) cannot be opened: clear error, no hang."""
    data = clips["mpeg4"].read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MissingVideoError, match=r"cut\.mp4.*truncated or corrupt"):
        VideoFile(bad)


def test_truncated_file_moov_at_start(tmp_path):
    """With the index first (faststart), the packets past the cut are detected before any decoding."""
    good = tmp_path / "fast.mp4"
    encode_video(good, np.stack([frame_image(g) for g in range(40)]), fps=10, faststart=True)
    data = good.read_bytes()
    bad = tmp_path / "fast_cut.mp4"
    bad.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(MissingVideoError, match=r"fast_cut\.mp4: truncated — only \d+ of 40 frames are in the file"):
        VideoFile(bad)


def test_truncated_real_open50_video(tmp_path, open50):
    src = open50 / "videos/image/chunk-000/file-003.mp4"
    bad = tmp_path / "file-003.mp4"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(src.stat().st_size // 3))
    with pytest.raises(MissingVideoError, match="truncated or corrupt"):
        VideoFile(bad)


def test_png_round_trip():
    img = frame_image(7)
    np.testing.assert_array_equal(decode_png(encode_png(img)), img.transpose(2, 0, 1))
    gray = decode_png(encode_png(img), channels=1)
    assert gray.shape == (1, *img.shape[:2])


def test_real_pusht_av1_random_access(lerobot_pusht):
    """AV1 (libdav1d): random frames equal the sequential decode of the same file."""
    path = lerobot_pusht / "videos/observation.image/chunk-000/file-000.mp4"
    with av.open(str(path)) as c:
        ref = [f.to_ndarray(format="rgb24") for _, f in zip(range(400), c.decode(video=0))]
    ref = np.stack(ref).transpose(0, 3, 1, 2)
    with VideoFile(path) as v:
        assert v.num_frames == 25650
        idx = np.random.default_rng(1).integers(0, 400, 50)
        np.testing.assert_array_equal(v.decode(idx), ref[idx])
