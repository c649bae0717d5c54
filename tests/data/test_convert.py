"""Convert PushT zarr -> LeRobot v3 -> zarr: numeric keys exact, images within a PSNR floor or exact (lossless)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from robopolicy.cli.main import main
from robopolicy.data.convert import convert, default_key_map, parse_renames
from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError
from tests.data.test_lerobot_writer import PSNR_FLOOR_DB, psnr

NUMERIC = ("state", "keypoint", "action", "n_contacts")
EPISODES = list(range(10))


def _check_round_trip(src_root, back_root, episodes, lossless):
    src = zarr.open_group(str(src_root), mode="r")
    back = zarr.open_group(str(back_root), mode="r")
    n = int(src["meta/episode_ends"][episodes[-1]])
    np.testing.assert_array_equal(back["meta/episode_ends"][:], src["meta/episode_ends"][: len(episodes)])
    assert sorted(back["data"].array_keys()) == sorted(src["data"].array_keys())
    for key in NUMERIC:
        a, b = src["data"][key][:n], back["data"][key][:]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    img_src, img_back = src["data/img"][:n].astype(np.uint8), back["data/img"][:]
    assert img_back.dtype == np.uint8 and img_back.shape == img_src.shape
    if lossless:
        np.testing.assert_array_equal(img_back, img_src)
        return None
    p = psnr(img_back, img_src)
    assert p.min() >= PSNR_FLOOR_DB, p.min()
    return p


@pytest.mark.parametrize("lossless", [False, True])
def test_pusht_zarr_to_lerobot_to_zarr(pusht_zarr, tmp_path, lossless):
    lr = convert(pusht_zarr, tmp_path / "lr", to="lerobot", fps=10, lossless=lossless, episodes=EPISODES, task="T")
    ds = open_dataset(lr)
    assert set(ds.features) >= {"observation.image", "observation.state", "keypoint", "action", "n_contacts"}
    assert ds.features["observation.image"].dtype == ("image" if lossless else "video")
    assert ds.fps == 10 and ds.num_episodes == 10 and ds.tasks == ["T"]
    back = convert(lr, tmp_path / "back.zarr", to="zarr")
    assert open_dataset(back).fps == 10
    _check_round_trip(pusht_zarr, back, EPISODES, lossless)


@pytest.mark.slow
def test_full_pusht_round_trip(pusht_zarr, tmp_path):
    lr = convert(pusht_zarr, tmp_path / "lr", to="lerobot", fps=10)
    back = convert(lr, tmp_path / "back.zarr", to="zarr")
    p = _check_round_trip(pusht_zarr, back, list(range(206)), lossless=False)
    print(f"PSNR over 25,650 frames: min {p.min():.2f} dB, mean {p.mean():.2f} dB")


def test_fps_is_required_for_diffusion_policy_zarr(pusht_zarr, tmp_path):
    with pytest.raises(DatasetError, match="--fps"):
        convert(pusht_zarr, tmp_path / "lr", to="lerobot")
    assert not (tmp_path / "lr").exists()


def test_fps_must_match_the_recorded_rate(pusht_zarr, tmp_path):
    z = convert(pusht_zarr, tmp_path / "z.zarr", to="zarr", fps=10, episodes=[0])
    with pytest.raises(DatasetError, match="fps=10"):
        convert(z, tmp_path / "lr", to="lerobot", fps=30)


def test_key_maps_and_renames():
    assert default_key_map(["img", "state", "keypoint", "action"], "lerobot") == {
        "img": "observation.image", "state": "observation.state", "keypoint": "keypoint", "action": "action",
    }  # fmt: skip
    assert default_key_map(["observation.image", "observation.state", "action"], "zarr") == {
        "observation.image": "img", "observation.state": "state", "action": "action",
    }  # fmt: skip
    assert parse_renames(["a=b", "x.y=z"]) == {"a": "b", "x.y": "z"}
    with pytest.raises(ValueError, match="SRC=DST"):
        parse_renames(["oops"])


def test_cli_convert_with_rename_and_overwrite(pusht_zarr, tmp_path):
    src = convert(pusht_zarr, tmp_path / "small.zarr", to="zarr", fps=10, episodes=[0, 1])
    dst = tmp_path / "lr"
    args = ["convert", str(src), str(dst), "--to", "lerobot", "--rename", "keypoint=observation.keypoint", "--lossless"]
    assert main(args) == 0
    ds = open_dataset(dst)
    assert "observation.keypoint" in ds.features and "keypoint" not in ds.features
    assert main(args) != 0  # exists, no --overwrite
    assert main([*args, "--overwrite"]) == 0
    assert main(["convert", str(src), str(tmp_path / "x"), "--to", "lerobot", "--rename", "nope=a"]) != 0
