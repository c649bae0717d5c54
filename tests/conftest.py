"""Shared fixtures: the real datasets in ../shared/data (tests skip with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name} not found at {path} (CI provides ../shared/data)")
    return path


@pytest.fixture(scope="session")
def pusht_zarr() -> Path:
    return shared_dataset("pusht_cchi_v7_replay.zarr")


@pytest.fixture(scope="session")
def lerobot_pusht() -> Path:
    return shared_dataset("lerobot_v3_pusht")


@pytest.fixture(scope="session")
def so101_record() -> Path:
    return shared_dataset("lerobot_v3_so101_record")


@pytest.fixture(scope="session")
def open50() -> Path:
    return shared_dataset("lerobot_v3_open50")
