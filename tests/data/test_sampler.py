"""WindowSampler: windows equal the raw arrays, pads at episode edges, never crossing episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from robopolicy.data.dataset import open_dataset
from robopolicy.data.sampler import WindowSampler, delta_timestamps_to_indices, make_dataloader

OBS = [-1, 0]  # T_o = 2
ACT = list(range(-1, 15))  # horizon 16, diffusion-policy convention


def _expected_window(raw, ends, anchor, deltas):
    """Independent reference: walk episodes in Python, pad by repeating the edge frame."""
    start = 0
    for end in ends:
        if anchor < end:
            break
        start = end
    vals, pads = [], []
    for d in deltas:
        q = anchor + d
        pads.append(q < start or q >= end)
        vals.append(raw[min(max(q, start), end - 1)])
    return np.stack(vals), np.array(pads)


def test_pusht_windows_match_raw_arrays(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    g = zarr.open_group(str(pusht_zarr), mode="r")
    raw = {k: g[f"data/{k}"][:] for k in ("state", "action", "keypoint")}
    ends = g["meta/episode_ends"][:]
    s = WindowSampler(ds, {"state": OBS, "keypoint": OBS, "action": ACT, "img": OBS})
    assert len(s) == 25650
    # episode starts, ends, interiors and the very last frame
    rand = np.random.default_rng(0).integers(0, 25650, 40).tolist()
    anchors = [0, 1, 160, 161, 162, 278, 279, 5000, 25636, 25649, *rand]
    batch = s.get_batch(anchors)
    for j, a in enumerate(anchors):
        for key, deltas in (("state", OBS), ("keypoint", OBS), ("action", ACT)):
            want, pad = _expected_window(raw[key], ends, int(a), deltas)
            np.testing.assert_array_equal(batch[key][j].numpy(), want)
            np.testing.assert_array_equal(batch[f"{key}_is_pad"][j].numpy(), pad)
    # hand-checked edges: first frame of episode 1 pads its history; last frame of episode 0 pads the future
    assert batch["state_is_pad"][3].tolist() == [True, False]
    assert batch["action_is_pad"][2].tolist() == [False, False] + [True] * 14
    np.testing.assert_array_equal(batch["action"][2][2:].numpy(), np.repeat(raw["action"][160:161], 14, 0))
    assert batch["img"].dtype == torch.uint8 and batch["img"].shape == (len(anchors), 2, 3, 96, 96)
    img_raw = g["data/img"]
    np.testing.assert_array_equal(batch["img"][3, 0].numpy().transpose(1, 2, 0), img_raw[161].astype(np.uint8))
    assert batch["episode_index"][:5].tolist() == [0, 0, 0, 1, 1]
    assert batch["frame_index"][:5].tolist() == [0, 1, 160, 0, 1]


def test_getitem_and_dataloader_agree(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    s = WindowSampler(ds, {"state": OBS, "action": ACT}, episodes=[0, 1])
    assert len(s) == 279
    item = s[161]
    assert item["state"].shape == (2, 5) and item["action"].shape == (16, 2)
    dl = make_dataloader(s, batch_size=32, shuffle=True, seed=0)
    batches = list(dl)
    assert len(batches) == 279 // 32
    b = batches[0]
    assert b["action"].shape == (32, 16, 2) and b["action_is_pad"].dtype == torch.bool
    seen = torch.cat([x["index"] for x in batches])
    assert len(set(seen.tolist())) == len(seen)  # a shuffled epoch without repeats
    assert int(seen.max()) < 279  # only the chosen episodes


def test_unknown_key_is_named(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    with pytest.raises(KeyError, match="no feature 'observation.state'"):
        WindowSampler(ds, {"observation.state": [0]})


def test_delta_timestamps_conversion():
    assert delta_timestamps_to_indices({"a": [-0.1, 0.0, 0.1]}, fps=10) == {"a": [-1, 0, 1]}
    with pytest.raises(ValueError, match="not a multiple of 1/fps"):
        delta_timestamps_to_indices({"a": [0.05]}, fps=10)


def test_alias_loads_one_key_at_two_offsets_with_pads(pusht_zarr):
    """The observation now and H steps later (a TD target) from one dataset key, each with its own pads."""
    ds = open_dataset(pusht_zarr)
    g = zarr.open_group(str(pusht_zarr), mode="r")
    raw, ends = g["data/state"][:], g["meta/episode_ends"][:]
    h = 8
    s = WindowSampler(ds, {"state": [0], "next.state": [h], "action": list(range(h))}, aliases={"next.state": "state"})
    last = int(ends[0]) - 1  # the last frame of episode 0: its "next" runs past the episode
    items = [0, last - h, last - h + 1, last, 25649]
    batch = s.get_batch(items)
    for row, anchor in enumerate(items):
        now, _ = _expected_window(raw, ends, anchor, [0])
        nxt, pad = _expected_window(raw, ends, anchor, [h])
        np.testing.assert_array_equal(batch["state"][row].numpy(), now)
        np.testing.assert_array_equal(batch["next.state"][row].numpy(), nxt)
        assert batch["next.state_is_pad"][row].tolist() == pad.tolist()
    assert batch["next.state_is_pad"][:, 0].tolist() == [False, False, True, True, True]
    assert not batch["state_is_pad"].any()


def test_alias_errors_name_the_problem(pusht_zarr):
    ds = open_dataset(pusht_zarr)
    with pytest.raises(KeyError, match="no delta indices"):
        WindowSampler(ds, {"state": [0]}, aliases={"next.state": "state"})
    with pytest.raises(KeyError, match="names of dataset features"):
        WindowSampler(ds, {"state": [0], "action": [1]}, aliases={"action": "state"})
    with pytest.raises(KeyError):
        WindowSampler(ds, {"next.x": [1]}, aliases={"next.x": "no_such_key"})
