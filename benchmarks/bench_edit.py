"""What editing a dataset costs (robopolicy.data.edit) and what it does to the video, on the real PushT datasets;
and how long a viz page takes to build.

    python benchmarks/bench_edit.py [--episodes 40]

Prints frames per second of keeping the first N episodes (LeRobot v3 both ways in one run: the default packet copy,
which still decodes for the stats, and --reencode-video's decode + AV1 re-encode; zarr: raw copy), the PSNR of each
way's frames against the source after 1, 2 and 3 successive edits (a re-encode is a generation; a copy is not), and
the seconds `robopolicy viz` takes for a page with 5 embedded episodes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from robopolicy.data import edit
from robopolicy.data.dataset import open_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=40, help="episodes kept from each source")
    args = p.parse_args()
    keep = list(range(args.episodes))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lerobot = DATA / "lerobot_v3_pusht"
        for name, src, reencode in (("LeRobot v3 (AV1 96x96), packets copied", lerobot, False),
                                    ("LeRobot v3 (AV1 96x96), --reencode-video", lerobot, True),
                                    ("zarr (raw uint8 96x96)", DATA / "pusht_cchi_v7_replay.zarr", False)):
            frames = sum(open_dataset(src).episodes[e].length for e in keep)
            tag = "zarr" if "zarr" in name else ("reencode" if reencode else "copy")
            start = time.perf_counter()
            out = edit.edit(src, tmp / tag, keep=keep, reencode_video=reencode)
            s = time.perf_counter() - start
            print(f"{name}: {args.episodes} episodes, {frames} frames kept in {s:.1f} s = {frames / s:.0f} frames/s")
            if "LeRobot" in name:
                original, gen = open_dataset(src), out
                for g in (1, 2, 3):
                    if g > 1:
                        start = time.perf_counter()
                        gen = edit.edit(gen, tmp / f"{tag}{g}", reencode_video=reencode)
                        print(f"  edit {g}: {frames / (time.perf_counter() - start):.0f} frames/s")
                    ds = open_dataset(gen)
                    values = [psnr(ds.read_episode("observation.image", e), original.read_episode(
                        "observation.image", e)) for e in range(0, args.episodes, max(1, args.episodes // 8))]
                    if np.isinf(values).all():
                        print(f"  after {g} edit(s): frames bit-identical to the source's decoded frames")
                    else:
                        print(f"  after {g} edit(s): PSNR {np.mean(values):.1f} dB (min {np.min(values):.1f}) against "
                              "the source's decoded frames")
        from robopolicy.viz.dataset_page import dataset_page

        start = time.perf_counter()
        page = dataset_page(DATA / "lerobot_v3_pusht", tmp / "page.html", max_episodes=5)
        print(f"viz page, 206 episodes listed, 5 embedded: {time.perf_counter() - start:.1f} s, "
              f"{page.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
