"""Trainer callbacks: hooks into the loop for evaluation, extra logging or early checks.

The trainer calls them on the main process only, in order, after its own work for that event: `on_train_start`
once the state is set up (and restored on resume), `on_step_end` after every optimizer step, `on_log` on logging
steps with the logged values as floats, `on_save` after a checkpoint is written, `on_train_end` after the last
step. `trainer.log_scalars(step, {...})` sends a callback's own values to tensorboard / wandb.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robopolicy.train.trainer import Trainer


class Callback:
    """Override the hooks you need; the rest do nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """`step`: optimizer steps done so far (1 after the first)."""

    def on_log(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        pass

    def on_save(self, trainer: Trainer, step: int, checkpoint: Path) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass


class Every(Callback):
    """Calls `fn(trainer, step)` every `every` steps and after the last step (every <= 0: never)."""

    def __init__(self, every: int, fn):
        self.every, self.fn = every, fn

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.every > 0 and (step % self.every == 0 or step == trainer.end):
            self.fn(trainer, step)
