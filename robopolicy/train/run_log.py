"""The run's logs: metrics.csv (one row per logging step), tensorboard scalars and optionally Weights & Biases.

Only the main process writes. On resume, rows after the resumed step (logged by the interrupted run after its
last checkpoint) are dropped, so every step appears once.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

FIRST_COLUMNS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "train_s")


class RunLog:
    def __init__(self, run_dir: Path, start: int, *, tensorboard: bool, wandb_project: str | None, config: dict):
        self.path = Path(run_dir) / "metrics.csv"
        self.columns, kept = _kept_rows(self.path, start)
        self._file = self.path.open("w", newline="")
        self._csv = None
        if self.columns:
            self._start_csv(self.columns)
            self._csv.writeheader()
            self._csv.writerows(kept)
            self._file.flush()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.wandb = _start_wandb(wandb_project, Path(run_dir), config) if wandb_project else None

    def _start_csv(self, columns: list[str]) -> None:
        self.columns = columns
        self._csv = csv.DictWriter(self._file, fieldnames=columns, restval="", extrasaction="ignore")

    def row(self, step: int, values: dict[str, float]) -> None:
        """One metrics.csv row and the same values as scalars. A value first logged later in the run (an actor
        updated every other step, a phase that starts after a warm-up) adds its column: the file is rewritten
        once with the wider header, earlier rows empty there."""
        if self._csv is None:
            self._start_csv([*[c for c in FIRST_COLUMNS if c == "step" or c in values],
                             *sorted(k for k in values if k not in FIRST_COLUMNS)])
            self._csv.writeheader()
        elif any(k not in self.columns for k in values):
            self._widen(sorted(k for k in values if k not in self.columns))
        self._csv.writerow({"step": step, **{k: f"{v:.8g}" for k, v in values.items()}})
        self._file.flush()
        self.scalars(step, {f"train/{k}": v for k, v in values.items()})

    def _widen(self, new_columns: list[str]) -> None:
        """Rewrite metrics.csv with more columns (a new file renamed over the old one: a crash keeps either)."""
        self._file.close()
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*self.columns, *new_columns], restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self._file = self.path.open("a", newline="")
        self._start_csv([*self.columns, *new_columns])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Tensorboard / wandb only (e.g. evaluation results)."""
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _kept_rows(path: Path, start: int) -> tuple[list[str] | None, list[dict]]:
    """The header and the rows with step <= start of an existing metrics.csv."""
    if start == 0 or not path.exists():
        return None, []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if int(r["step"]) <= start]
        return list(reader.fieldnames or []) or None, rows


def _start_wandb(project: str, run_dir: Path, config: dict):
    try:
        import wandb
    except ImportError:
        raise SystemExit("train.wandb_project is set but wandb is not installed: pip install wandb") from None
    return wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config, resume="allow")
