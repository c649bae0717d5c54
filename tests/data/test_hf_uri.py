"""`hf://<repo_id>[@rev]` goes through huggingface_hub's real snapshot resolution, offline, from a local cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import zarr

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(cache, repo_id, commit, ref="main"):
    """Lay out a dataset snapshot the way huggingface_hub's cache stores it."""
    repo_dir = cache / f"datasets--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit  # the repo root is itself a zarr store
    root = zarr.open_group(str(snap), mode="w", zarr_format=2)
    data = root.create_group("data")
    a = data.create_array("action", shape=(5, 2), dtype="float32")
    a[:] = np.arange(10, dtype=np.float32).reshape(5, 2)
    e = root.create_group("meta").create_array("episode_ends", shape=(2,), dtype="int64")
    e[:] = [2, 5]
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return snap


def test_hf_uri_resolves_from_local_cache(tmp_path):
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someone/demo", COMMIT)
    code = textwrap.dedent(
        """
        from robopolicy.data.dataset import open_dataset
        for uri in ("hf://someone/demo", "hf://someone/demo@main"):
            ds = open_dataset(uri)
            print(ds.num_episodes, ds.num_frames, ds.read("action", [4]).tolist())
        """
    )
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["2 5 [[8.0, 9.0]]", "2 5 [[8.0, 9.0]]"]


def test_hf_uri_bad_repo_id_is_clear():
    import pytest

    from robopolicy.data.dataset import open_dataset
    from robopolicy.data.errors import DatasetError

    with pytest.raises(DatasetError, match="expected hf://<owner>/<name>"):
        open_dataset("hf://no-owner")
