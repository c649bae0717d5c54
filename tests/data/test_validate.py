"""Validation: each broken-dataset case gives a clear error (at open) or a named problem (validate_dataset)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robopolicy.data.dataset import detect_format, open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.validate import DatasetValidationError, check_dataset, validate_dataset
from tests.data.lerobot_fixtures import CAM, rewrite_parquet, write_v3

DATA0 = "data/chunk-000/file-000.parquet"  # episodes 0 (rows 0-4) and 1 (rows 5-11)
DATA1 = "data/chunk-000/file-001.parquet"  # episode 2 (rows 0-5)
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture
def root(tmp_path):
    return write_v3(tmp_path / "ds")


def _set_column(table: pa.Table, name: str, values: np.ndarray, type_=None) -> pa.Table:
    i = table.schema.get_field_index(name)
    if type_ is not None and pa.types.is_fixed_size_list(type_):
        array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    else:
        array = pa.array(values, type_)
    return table.set_column(i, name, array)


def test_clean_dataset_has_no_problems(root):
    assert validate_dataset(root, decode=True) == []
    check_dataset(open_dataset(root))


def test_missing_info_json(root):
    (root / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json is missing; restore it"):
        detect_format(root)
    with pytest.raises(DatasetError, match=r"meta/info\.json is missing"):
        open_dataset(root)
    problems = validate_dataset(root)
    assert [p.check for p in problems] == ["open"] and "meta/info.json is missing" in problems[0].message


def test_feature_declared_but_absent_from_parquet(root):
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.velocity"] = {"dtype": "float32", "shape": [2], "names": None}
    (root / "meta/info.json").write_text(json.dumps(info))
    msg = r"file-000\.parquet: feature.*'observation\.velocity'.* declared in meta/info\.json but absent"
    with pytest.raises(DatasetError, match=msg):
        open_dataset(root)
    problems = validate_dataset(root)
    assert [(p.check, p.key) for p in problems] == [("columns", "observation.velocity")] * 2
    assert [p.file for p in problems] == [str(root / DATA0), str(root / DATA1)]
    assert str(root / DATA0) in problems[0].message


def test_episode_length_disagrees_with_rows(root):
    def longer(t):
        length = t.column("length").to_numpy().copy()
        to = t.column("dataset_to_index").to_numpy().copy()
        length[1] += 1
        to[1] += 1
        t = _set_column(t, "length", length, pa.int64())
        return _set_column(t, "dataset_to_index", to, pa.int64())

    rewrite_parquet(root / EPISODES, longer)
    info = json.loads((root / "meta/info.json").read_text())
    info["total_frames"] += 1
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"file-000\.parquet: episode 1 has length 8 in the episodes metadata but "
                                           r"the data file has 7 rows with index in \[5, 13\)"):
        open_dataset(root)


def test_index_range_disagrees_with_length(root):
    def shifted(t):
        frm = t.column("dataset_from_index").to_numpy().copy()
        frm[2] += 1
        return _set_column(t, "dataset_from_index", frm, pa.int64())

    rewrite_parquet(root / EPISODES, shifted)
    msg = r"episode 2 has length 6 but dataset_from_index=13, dataset_to_index=18 span 5"
    with pytest.raises(DatasetError, match=msg):
        open_dataset(root)


def test_data_rows_missing(root):
    rewrite_parquet(root / DATA0, lambda t: t.slice(0, 11))  # drop the last row of episode 1
    with pytest.raises(DatasetError, match=r"episode 1 has length 7 .* has 6 rows with index in \[5, 12\)"):
        open_dataset(root)


def test_rows_belong_to_another_episode(root):
    def relabel(t):
        ep = t.column("episode_index").to_numpy().copy()
        ep[6] = 0
        return _set_column(t, "episode_index", ep, pa.int64())

    rewrite_parquet(root / DATA0, relabel)
    with pytest.raises(DatasetError, match=r"episode 1 in the episodes metadata\) include 1 rows with episode_index 0"):
        open_dataset(root)


def test_totals_disagree_with_info(root):
    info = json.loads((root / "meta/info.json").read_text())
    info["total_episodes"] = 4
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"total_episodes=4 but the episodes metadata lists 3 episodes"):
        open_dataset(root)


def test_missing_data_file(root):
    (root / DATA1).unlink()
    with pytest.raises(DatasetError, match=r"file-001\.parquet: data file of episodes \[2\] is missing"):
        open_dataset(root)


def test_nan_and_inf_reported_by_key_and_episode(root):
    def poison(path, row, value):
        def fn(t):
            v = np.stack(t.column("observation.state").to_numpy(zero_copy_only=False)).astype(np.float32)
            v[row, 1] = value
            return _set_column(t, "observation.state", v, t.schema.field("observation.state").type)

        rewrite_parquet(root / path, fn)

    poison(DATA0, 8, np.nan)  # episode 1, frame 3
    poison(DATA1, 0, np.inf)  # episode 2, frame 0
    ds = open_dataset(root)  # opening stays cheap: values are not scanned
    problems = validate_dataset(ds)
    assert [p.check for p in problems] == ["non_finite"]
    p = problems[0]
    assert p.key == "observation.state" and p.episodes == (1, 2)
    assert "'observation.state' has NaN/inf in 2 frames" in p.message
    assert "episode 1: 1 frames from frame 3" in p.message and "episode 2: 1 frames from frame 0" in p.message
    with pytest.raises(DatasetValidationError, match=r"1 problem\(s\) found:\n  - \[non_finite\]"):
        check_dataset(ds)


def test_non_monotonic_timestamps(root):
    def swap(t):
        ts = t.column("timestamp").to_numpy().copy()
        ts[2], ts[3] = ts[3], ts[2]  # episode 2, frames 2 and 3
        return _set_column(t, "timestamp", ts, pa.float32())

    rewrite_parquet(root / DATA1, swap)
    problems = validate_dataset(root)
    mono = [p for p in problems if p.check == "timestamps" and "not increasing" in p.message]
    assert len(mono) == 1 and mono[0].episodes == (2,)
    assert "episode 2 at frame 3" in mono[0].message
    spacing = [p for p in problems if p.check == "timestamps" and "1/fps" in p.message]
    assert spacing and spacing[0].episodes == (2,)


def test_dropped_frame_breaks_timestamp_spacing(root):
    def gap(t):
        ts = t.column("timestamp").to_numpy().copy()
        ts[4:] += 0.1  # episode 2: a frame was dropped before frame 4
        return _set_column(t, "timestamp", ts, pa.float32())

    rewrite_parquet(root / DATA1, gap)
    problems = validate_dataset(root)
    checks = {p.check for p in problems}
    assert checks == {"timestamps", "video_frames"}
    video = next(p for p in problems if p.check == "video_frames")
    assert video.key == CAM and video.episodes == (2,)
    assert "1 of 6 frames have no video frame within tolerance_s" in video.message  # the last one: past the end


def test_frame_index_out_of_order(root):
    def bad(t):
        fi = t.column("frame_index").to_numpy().copy()
        fi[1] = 7
        return _set_column(t, "frame_index", fi, pa.int64())

    rewrite_parquet(root / DATA1, bad)
    problems = validate_dataset(root)
    assert [(p.check, p.episodes) for p in problems] == [("frame_index", (2,))]


def test_missing_and_truncated_videos_reported(root):
    (root / f"videos/{CAM}/chunk-000/file-000.mp4").unlink()
    path = root / f"videos/{CAM}/chunk-000/file-001.mp4"
    path.write_bytes(path.read_bytes()[:300])
    ds = open_dataset(root)
    assert ds.read("action", [0]).tolist() == [[0.0, 0.0]]
    problems = validate_dataset(ds)
    by_check = {p.check: p for p in problems}
    assert set(by_check) == {"missing_video", "unreadable_video"}
    assert by_check["missing_video"].episodes == (0,) and "file-000.mp4" in by_check["missing_video"].message
    assert by_check["unreadable_video"].episodes == (1, 2) and "file-001.mp4" in by_check["unreadable_video"].message
    assert "truncated or corrupt" in by_check["unreadable_video"].message
    assert validate_dataset(ds, videos=False) == []


def test_stats_missing_for_action(root):
    stats = json.loads((root / "meta/stats.json").read_text())
    del stats["action"]
    stats["observation.state"]["mean"] = [1.0, 2.0, 3.0]
    (root / "meta/stats.json").write_text(json.dumps(stats))
    problems = validate_dataset(root)
    assert sorted((p.check, p.key) for p in problems) == [("stats", "action"), ("stats", "observation.state")]


def test_real_datasets(lerobot_pusht, so101_record, open50):
    assert validate_dataset(lerobot_pusht) == []
    so101 = validate_dataset(so101_record)
    assert [(p.check, p.key, p.episodes) for p in so101] == [
        ("missing_video", "observation.images.front", (0, 1, 2, 3)),
        ("missing_video", "observation.images.top", (0, 1, 2, 3)),
    ]
    o50 = validate_dataset(open50, decode=True)
    assert [(p.check, p.key) for p in o50] == [("missing_video", "image")]
    assert o50[0].episodes == tuple(e for e in range(50) if e not in (0, 3, 4))


def test_parquet_fixture_sanity(root):
    """The fixture writes LeRobot's column types (guards the tests above against a drifting fixture)."""
    schema = pq.read_schema(root / DATA0)
    assert pa.types.is_fixed_size_list(schema.field("observation.state").type)
    assert schema.field("timestamp").type == pa.float32()


def test_empty_dataset_is_valid(tmp_path):
    from robopolicy.data.features import Feature
    from robopolicy.data.writer import create_writer

    feats = {"action": Feature("action", "float32", (2,), "action")}
    for fmt in ("lerobot", "zarr"):
        create_writer(tmp_path / fmt, feats, 10, format=fmt).finalize()
        assert validate_dataset(tmp_path / fmt) == [], fmt


def test_reader_side_checks_raise_one_error_naming_the_file(root):
    from robopolicy.data.metadata_checks import check_info, load_json, raise_problems

    path = root / "meta/info.json"
    path.write_text("[1, 2]")
    info, problems = load_json(path, "info")
    assert problems == []
    with pytest.raises(DatasetError, match=r"meta/info\.json: must be a JSON object, got a list"):
        raise_problems(check_info(info, path))
    path.write_bytes(b"\xff\xfe{")
    assert "not text" in load_json(path, "info")[1][0].message
    raise_problems([])
