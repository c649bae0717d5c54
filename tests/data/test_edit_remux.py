"""Lossless LeRobot v3 edits: delete / split / merge / features copy each kept episode's video packets instead of
re-encoding them; frames stay bit for bit, the encoder is not called, and an episode whose packets cannot be copied
(not starting at a keyframe, another codec) is re-encoded with one message naming the key and the episode."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from robopolicy.data import edit, lerobot_writer
from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import Feature
from robopolicy.data.validate import validate_dataset
from robopolicy.data.writer import create_writer
from tests.data.lerobot_fixtures import frame_image, write_v3

FRONT, WRIST = "observation.images.front", "observation.images.wrist"
LENGTHS = (6, 5, 7, 4)


def _source(root: Path, lengths=LENGTHS, **options) -> Path:
    """A LeRobot v3 dataset from the project's writer: two cameras (32x48 libx264), state, action; episode e has
    task 'task e%2' and success e%2."""
    feats = {FRONT: Feature(FRONT, "video", (32, 48, 3), "image"), WRIST: Feature(WRIST, "video", (32, 48, 3), "image"),
             "observation.state": Feature("observation.state", "float32", (2,), "state"),
             "action": Feature("action", "float32", (2,), "action")}
    g = 0
    with create_writer(root, feats, 10, vcodec="libx264", **options) as w:
        for e, n in enumerate(lengths):
            for _ in range(n):
                w.add_frame({FRONT: frame_image(g), WRIST: frame_image(3 * g + 1)[::-1].copy(),
                             "observation.state": np.array([g, 0.5], np.float32),
                             "action": np.array([-g, e], np.float32)})
                g += 1
            w.save_episode(task=f"task {e % 2}", success=bool(e % 2))
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return _source(tmp_path_factory.mktemp("remux") / "src")


@pytest.fixture
def no_encoder(monkeypatch):
    """Fail any video encode: what passes under it copied its packets."""
    def refuse(*args, **kwargs):
        raise AssertionError("the video encoder was called")

    monkeypatch.setattr(lerobot_writer, "encode_video", refuse)


def packets(root: Path, key: str, pos: int) -> list[bytes]:
    """The bytes of the video packets of episode `pos` of `key` (by its from/to timestamps)."""
    ds = open_dataset(root)
    seg = ds.sources[pos].videos[key]
    with av.open(str(seg.path)) as c:
        s = c.streams.video[0]
        return [bytes(p) for p in c.demux(s) if p.pts is not None and p.size
                and seg.from_timestamp - 1e-4 <= float(p.pts * s.time_base) < seg.to_timestamp - 1e-4]


def assert_same_episodes(src: Path, out: Path, pairs: list[tuple[int, int]], keys=((FRONT, FRONT), (WRIST, WRIST))):
    """Episode `new` of `out` equals episode `old` of `src`: frames and packet bytes of every camera, numbers."""
    a, b = open_dataset(src), open_dataset(out)
    assert b.num_episodes == len(pairs)
    for new, old in pairs:
        for ks, kd in keys:
            np.testing.assert_array_equal(b.read_episode(kd, new), a.read_episode(ks, old))
            assert packets(out, kd, new) == packets(src, ks, old)
        for key in ("observation.state", "action"):
            np.testing.assert_array_equal(b.read_episode(key, new), a.read_episode(key, old))
        assert b.episodes[new].tasks == a.episodes[old].tasks
        if a.episode_success is not None:
            assert b.episode_success[new] == a.episode_success[old]
    assert validate_dataset(out, decode=True) == []


def test_delete_split_merge_and_rename_copy_the_packets(made, tmp_path, no_encoder):
    out = edit.delete_episodes(made, tmp_path / "del", [1])
    assert_same_episodes(made, out, [(0, 0), (1, 2), (2, 3)])
    parts = edit.split(made, {"a": [0, 2], "b": [1, 3]}, tmp_path / "splits")
    assert_same_episodes(made, parts["a"], [(0, 0), (1, 2)])
    assert_same_episodes(made, parts["b"], [(0, 1), (1, 3)])
    merged = edit.merge([parts["b"], parts["a"]], tmp_path / "merged")
    assert_same_episodes(made, merged, [(0, 1), (1, 3), (2, 0), (3, 2)])
    renamed = edit.edit(made, tmp_path / "renamed", remove=[WRIST], rename={FRONT: "observation.images.top"})
    assert_same_episodes(made, renamed, [(e, e) for e in range(4)], keys=[(FRONT, "observation.images.top")])
    ds = open_dataset(merged)
    assert ds.features[FRONT].info["video.codec"] == "h264" and ds.features[FRONT].info["video.g"] == 2
    frames = np.concatenate([ds.read_episode(FRONT, e) for e in range(4)])
    np.testing.assert_allclose(ds.stats[FRONT]["max"].ravel(), frames.max((0, 2, 3)) / 255.0)  # stats anew


def test_every_copied_episode_in_its_own_file_keeps_from_and_to_timestamps(made, tmp_path, no_encoder, monkeypatch):
    real = edit.create_writer
    monkeypatch.setattr(edit, "create_writer", lambda *a, **k: real(*a, **k, video_files_size_in_mb=1e-6))
    out = edit.delete_episodes(made, tmp_path / "rot", [0])
    assert_same_episodes(made, out, [(0, 1), (1, 2), (2, 3)])
    ds = open_dataset(out)
    assert len({ds.sources[p].videos[FRONT].path for p in range(3)}) == 3
    assert [ds.sources[p].videos[FRONT].from_timestamp for p in range(3)] == [0.0, 0.0, 0.0]
    # and from several files back into one: each episode starts where the one before it ends
    monkeypatch.setattr(edit, "create_writer", real)
    back = edit.merge([out, tmp_path / "rot"], tmp_path / "back")
    segs = [open_dataset(back).sources[p].videos[FRONT] for p in range(6)]
    assert len({s.path for s in segs}) == 1
    assert [s.from_timestamp for s in segs[1:]] == pytest.approx([s.to_timestamp for s in segs[:-1]])
    assert_same_episodes(made, back, [(0, 1), (1, 2), (2, 3), (3, 1), (4, 2), (5, 3)])


def test_reencode_video_re_encodes(made, tmp_path, monkeypatch):
    calls = []
    real = lerobot_writer.encode_video
    monkeypatch.setattr(lerobot_writer, "encode_video", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = edit.delete_episodes(made, tmp_path / "re", [0], reencode_video=True)
    assert len(calls) == 2 * 3  # two cameras, three episodes
    assert validate_dataset(out) == [] and open_dataset(out).num_episodes == 3


def _continuous(src: Path, dst: Path) -> Path:
    """`src` with each camera's file replaced by one encode of all its frames (keyframe only at frame 0): episodes
    after the first do not start at a keyframe."""
    shutil.copytree(src, dst)
    ds = open_dataset(dst)
    for key in (FRONT, WRIST):
        frames = np.concatenate([ds.read_episode(key, e) for e in range(ds.num_episodes)]).transpose(0, 2, 3, 1)
        path = Path(ds.sources[0].videos[key].path)
        with av.open(str(path.with_suffix(".new.mp4")), "w") as c:
            s = c.add_stream("libx264", rate=10, options={"g": "1000", "bf": "0", "crf": "18", "preset": "ultrafast",
                                                          "x264-params": "scenecut=0"})
            s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
            for i, img in enumerate(frames):
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                f.pts, f.time_base = i, Fraction(1, 10)
                for p in s.encode(f):
                    c.mux(p)
            for p in s.encode(None):
                c.mux(p)
        path.with_suffix(".new.mp4").replace(path)
    ds.close()
    return dst


def test_an_episode_not_starting_at_a_keyframe_is_re_encoded_once_said(made, tmp_path):
    src = _continuous(made, tmp_path / "continuous")
    with av.open(str(open_dataset(src).sources[0].videos[FRONT].path)) as c:
        assert [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size].count(True) == 1  # the premise
    messages: list[str] = []
    out = edit.edit(src, tmp_path / "out", log=messages.append)
    for key in (FRONT, WRIST):
        first = [m for m in messages if m.startswith(f"{key}, episode 1 ")]
        assert len(first) == 1 and "keyframe" in first[0] and "re-encoding" in first[0]
        assert f"{key}: 3 of 4 episodes re-encoded, the others' video packets copied" in messages
    assert len(messages) == 4
    a, b = open_dataset(src), open_dataset(out)
    np.testing.assert_array_equal(b.read_episode(FRONT, 0), a.read_episode(FRONT, 0))  # copied
    for e in (1, 2, 3):  # re-encoded: close, not exact
        diff = np.abs(b.read_episode(FRONT, e).astype(int) - a.read_episode(FRONT, e).astype(int))
        assert diff.mean() < 3
    # copied packets (x264 ultrafast) and re-encoded ones (x264 medium) have other codec headers: two files
    assert len({b.sources[p].videos[FRONT].path for p in range(4)}) == 2
    assert validate_dataset(out, decode=True) == []


def test_a_stream_of_another_codec_than_the_metadata_says_is_re_encoded(tmp_path):
    src = write_v3(tmp_path / "v3", video_files=((0, 1, 2),))  # info.json says h264, the file is mpeg4
    with pytest.warns(UserWarning) as caught:
        out = edit.delete_episodes(src, tmp_path / "out", [1])
    said = [str(w.message) for w in caught]
    assert len(said) == 2
    assert said[0].startswith("observation.images.cam, episode 0 ") and "codec mpeg4, the output h264" in said[0]
    assert said[1] == "observation.images.cam: 2 of 2 episodes re-encoded"
    assert open_dataset(out).features["observation.images.cam"].info["video.codec"] == "h264"
    assert validate_dataset(out) == []


def test_the_command_line_copies_unless_told_to_re_encode(made, tmp_path, monkeypatch, capsys):
    from robopolicy.cli.main import main

    calls = []
    real = lerobot_writer.encode_video
    monkeypatch.setattr(lerobot_writer, "encode_video", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["edit", "delete", str(made), str(tmp_path / "d"), "--episodes", "0", "--no-progress"]) == 0
    assert calls == []
    assert main(["edit", "delete", str(made), str(tmp_path / "r"), "--episodes", "0", "--reencode-video",
                 "--no-progress"]) == 0
    assert len(calls) == 6


def test_real_lerobot_pusht_delete_is_lossless(lerobot_pusht, tmp_path, no_encoder):
    """LeRobot's own AV1 files: delete episodes 2 and 5 of the first ten (the whole dataset takes minutes)."""
    keep = [0, 1, 3, 4, 6, 7, 8, 9]
    out = edit.edit(lerobot_pusht, tmp_path / "pusht", keep=keep)
    assert_same_episodes(lerobot_pusht, out, list(enumerate(keep)), keys=[("observation.image",) * 2])
