"""Training: a `Trainer` set up from a config, its loop, and a replaceable update step.

accelerate handles devices and processes (1 CPU .. N GPUs / nodes; `accelerate launch --num_processes 2 --cpu`
runs DDP over gloo). The global batch is split across processes; batches are a pure function of (seed, step),
and every module, optimizer, the EMA and the RNG are checkpointed, so `resume=True` continues exactly where the
run stopped. What a step does is an `UpdateRule` (robopolicy.train.update; behaviour cloning by default);
evaluation and other extras are callbacks (robopolicy.train.callbacks) given by the caller, so this module
imports no simulator.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm

from robopolicy.config_parsing import ConfigError, suggest
from robopolicy.data.dataset import Dataset, open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.sampler import EpochBatchSampler, _keep_batch
from robopolicy.data.stats import compute_stats
from robopolicy.policies.policy import TASK_KEY, Policy
from robopolicy.train.callbacks import Callback
from robopolicy.train.checkpoint import (
    check_resume_data,
    latest_checkpoint,
    load_train_state,
    prune_checkpoints,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
)
from robopolicy.train.config import TrainConfig
from robopolicy.train.ema import EMA
from robopolicy.train.run_log import RunLog
from robopolicy.train.update import POLICY, BehaviourCloning, Learner, UpdateRule
from robopolicy.train.update import make_optimizer as make_optimizer  # re-exported: the benchmarks use it


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def check_trainable(cfg: TrainConfig, dataset: Dataset) -> None:
    """Refuse, naming the field or the dataset, data that leaves nothing to train on: no episodes or frames,
    episode indices outside the dataset, input / action keys the dataset lacks."""
    uri = cfg.data.uri
    if dataset.num_episodes == 0 or dataset.num_frames == 0:
        raise DatasetError(f"{uri}: the dataset has {dataset.num_episodes} episodes and {dataset.num_frames} frames, "
                           "nothing to train on; record or collect episodes into it first (robopolicy record / "
                           "robopolicy collect --append)")
    episodes = cfg.data.episodes or ()
    outside = [e for e in episodes if e >= dataset.num_episodes]
    if outside:
        raise ConfigError(f"data.episodes: {outside[:5]} outside the dataset; {uri} has episodes "
                          f"0..{dataset.num_episodes - 1}")
    if episodes and all(dataset.episodes[e].length == 0 for e in episodes):
        raise DatasetError(f"{uri}: the episodes {list(episodes)[:5]} of data.episodes have no frames, nothing to "
                           "train on; choose other data.episodes")
    features = sorted(dataset.features)
    for key in cfg.data.input_keys or ():
        if key != TASK_KEY and key not in dataset.features:
            raise ConfigError(f"data.input_keys: {key!r} is not a feature of {uri}; it has {features}"
                              f"{suggest(key, features)}")
    if cfg.data.action_key not in dataset.features:
        raise ConfigError(f"data.action_key={cfg.data.action_key!r}: not a feature of {uri}; it has {features}"
                          f"{suggest(cfg.data.action_key, features)}")


def build_policy(cfg: TrainConfig, dataset) -> Policy:
    """A fresh policy for `dataset`, with stats of the normalized keys computed by streaming over it."""
    head = cfg.policy_config()  # validated; the fields the preset sets override the head's defaults
    check_trainable(cfg, dataset)
    overrides = {name: getattr(head, name) for name in cfg.policy if name != "type"}
    input_keys = list(cfg.data.input_keys) if cfg.data.input_keys else [
        k for k, f in dataset.features.items() if f.kind in ("state", "image", "video")
    ]
    numeric = [k for k in [*input_keys, cfg.data.action_key] if k != TASK_KEY and not dataset.feature(k).is_visual]
    stats = compute_stats(dataset, numeric, episodes=cfg.data.episodes)
    return Policy.from_dataset(
        type(head), dataset, stats, input_keys=input_keys, action_key=cfg.data.action_key, **overrides
    )


class Trainer:
    """Set up in the constructor (accelerator, data, policy, the rule's modules and optimizers, EMA, resumed
    state), then `run()` the loop; `update(batch, step)` is one optimizer step.

    rule: what a step does (default BehaviourCloning); callbacks: hooks run on the main process (evaluation...);
    resume: continue from <output_dir>/checkpoints/last; stop_after: end early at that step (for tests)."""

    def __init__(self, cfg: TrainConfig, *, rule: UpdateRule | None = None, callbacks: Sequence[Callback] = (),
                 resume: bool = False, stop_after: int | None = None, policy: Policy | None = None):
        self.cfg, tc = cfg, cfg.train
        self.rule = rule or BehaviourCloning()
        self.callbacks = list(callbacks)
        mixed = "bf16" if tc.amp == "bf16" or (tc.amp == "auto" and torch.cuda.is_available()
                                                and torch.cuda.is_bf16_supported()) else "no"
        # cpu=True when there is no GPU: accelerate then runs DDP over gloo across the launched processes
        self.acc = acc = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
        self.run_dir = Path(tc.output_dir)
        self._claim_run_dir(resume)
        ckpt = resume_checkpoint(self.run_dir) if resume else None  # before the data: fail fast on a bad run dir
        torch.manual_seed(tc.seed + acc.process_index)

        # data, policy, the rule's modules and optimizers (moved and wrapped by accelerate)
        self.dataset = open_dataset(cfg.data.uri, **cfg.data.open_options())
        if policy is None:
            policy = build_policy(cfg, self.dataset)
        else:  # fine-tuning a trained policy: its features must be the dataset's
            check_trainable(cfg, self.dataset)
            policy.check_dataset(self.dataset)
        self.windows = self.rule.sampler(self.dataset, policy, cfg.data.episodes)
        self.sharded: tuple[str, ...] = ()
        if tc.fsdp:  # before the optimizers exist: they must hold the sharded parameters
            self._shard(policy)
        modules, optimizers = self.rule.build(policy, cfg)
        if modules.get(POLICY) is not policy:
            raise ValueError(f"{type(self.rule).__name__}.build must return the policy it was given as {POLICY!r}")
        for opt in optimizers.values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])  # the schedule scales every group from its own base
        self.modules, self.optimizers = self._prepare(modules, optimizers)
        self.policy: Policy = acc.unwrap_model(self.modules[POLICY])
        # after accelerate moved the model, so the shadows start on its device
        self.ema = EMA(self.policy.head, tc.ema_power, tc.ema_max_decay) if tc.ema_power > 0 else None
        self.learner = Learner(acc, self.modules, self.optimizers, cfg.optim.grad_clip)
        self.data_info = {
            "root": str(Path(self.dataset.root).resolve()), "episodes": _plain(cfg.data.episodes),
            "num_episodes": self.dataset.num_episodes, "num_frames": self.dataset.num_frames,
        }

        self.start = 0
        if ckpt is not None:
            check_resume_data(ckpt, self.policy, self.data_info)
            self.start = load_train_state(ckpt, self._unwrapped(), self.optimizers, self.ema, sharded=self.sharded,
                                          rank=acc.process_index)
            acc.print(f"resumed from {ckpt} at step {self.start}")
        self.end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        self.log: RunLog | None = None

    def _claim_run_dir(self, resume: bool) -> None:
        """Refuse to replace an existing run unless asked (train.overwrite), then clear it."""
        checkpoints = self.run_dir / "checkpoints"
        if resume or not checkpoints.exists():
            return
        if not self.cfg.train.overwrite:
            raise FileExistsError(
                f"{self.run_dir} already holds a training run; pass --resume to continue it, "
                "--train.overwrite=true to replace it, or choose another --train.output_dir"
            )
        if self.acc.is_main_process:
            shutil.rmtree(checkpoints)
            (self.run_dir / "metrics.csv").unlink(missing_ok=True)
        self.acc.wait_for_everyone()

    def _shard(self, policy: Policy) -> None:
        """FSDP2 over the launched processes: the head's repeated blocks one by one, then the policy."""
        from robopolicy.train.sharding import shard

        if self.acc.num_processes < 2:
            raise ConfigError("train.fsdp=true shards the policy across processes, but this run has one; launch "
                              "several, e.g. `accelerate launch --num_processes 8 -m robopolicy.cli.main train ...`, "
                              "or set train.fsdp=false")
        units = shard(policy.to(self.acc.device), policy.head.fsdp_layer_classes())
        self.sharded = (POLICY,)
        self.acc.print(f"fsdp: the policy sharded over {self.acc.num_processes} processes ({units} block units "
                       "and the rest)")

    def _prepare(self, modules: dict, optimizers: dict) -> tuple[dict, dict]:
        """accelerate.prepare the trainable modules and the optimizers in one call (it re-points each optimizer
        at its moved parameters); modules without trainable parameters (targets) are only moved, FSDP-sharded
        ones are left as they are (FSDP itself reduces their gradients)."""
        trainable = [n for n, m in modules.items()
                     if any(p.requires_grad for p in m.parameters()) and n not in self.sharded]
        prepared = self.acc.prepare(*(modules[n] for n in trainable), *optimizers.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        out_modules = {n: modules[n] if n in self.sharded else modules[n].to(self.acc.device) for n in modules}
        out_modules.update(zip(trainable, prepared[: len(trainable)]))
        return out_modules, dict(zip(optimizers, prepared[len(trainable):]))

    def _unwrapped(self) -> dict[str, torch.nn.Module]:
        return {n: self.acc.unwrap_model(m) for n, m in self.modules.items()}

    # ------------------------------------------------------------------ one step
    def update(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Schedule every optimizer's learning rate, run the rule's step on `batch` (step `step`, 0-based), update
        the EMA. Returns the rule's log values (detached tensors)."""
        total = self.cfg.train.steps
        for name, opt in self.optimizers.items():
            start = self.rule.schedule_start(name)  # e.g. the policy's schedule starts after a critic warm-up
            scale = lr_at(step - start, 1.0, self.cfg.optim.warmup_steps, total - start) if step >= start else 0.0
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        batch = {k: v.to(self.acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        values = self.rule.update(self.learner, batch, step)
        if self.ema is not None and step >= self.rule.schedule_start(POLICY):  # averages the policy's updates
            self.ema.update(self.policy.head)
        return values

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train from self.start to self.end; returns the last checkpoint directory."""
        acc, tc = self.acc, self.cfg.train
        batches = EpochBatchSampler(
            len(self.windows), tc.batch_size, seed=tc.seed, start_step=self.start,
            num_steps=max(0, self.end - self.start), rank=acc.process_index, world_size=acc.num_processes,
            weights=self.rule.window_weights(self.windows, self.cfg.data.balance),
        )
        loader = torch.utils.data.DataLoader(
            self.windows, batch_sampler=batches, collate_fn=_keep_batch, num_workers=self.cfg.data.num_workers,
            generator=torch.Generator().manual_seed(tc.seed),  # keeps the loader off the global RNG (exact resume)
        )
        acc.print(
            f"training {self.cfg.policy['type']} on {self.cfg.data.uri}: {len(self.windows)} windows, steps "
            f"{self.start}..{self.end}, global batch {tc.batch_size} over {acc.num_processes} process(es) on "
            f"{acc.device}"
        )
        main = acc.is_main_process
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            self.log = RunLog(self.run_dir, self.start, tensorboard=tc.tensorboard, wandb_project=tc.wandb_project,
                              config=self.cfg.to_dict())
            self._call("on_train_start")
        bar = tqdm(total=self.end, initial=self.start, disable=not (tc.progress and main), desc="train",
                   dynamic_ncols=True)
        for module in self.modules.values():  # targets (no trainable parameters) stay in eval mode
            module.train(any(p.requires_grad for p in module.parameters()))
        last_ckpt = None
        t_log, seen = time.perf_counter(), 0
        train_s = 0.0  # wall time of data loading + steps since this process started; evals, checkpoints excluded
        t_mark = time.perf_counter()
        for step, batch in enumerate(loader, start=self.start):
            values = self.update(batch, step)
            seen += tc.batch_size
            done = step + 1
            train_s += time.perf_counter() - t_mark
            if done % tc.log_every == 0 or done == self.end:
                logs = self._gather(values)  # the only host sync of a step, on logging steps (every process)
                logs.update(lr=self._lr(), samples_per_s=seen / max(1e-9, time.perf_counter() - t_log),
                            train_s=train_s)
                if main:
                    self.log.row(done, logs)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", samples_s=f"{logs['samples_per_s']:.0f}",
                                    refresh=False)
                    self._call("on_log", done, logs)
                t_log, seen = time.perf_counter(), 0
            bar.update(1)
            if done % tc.save_every == 0 or done == self.end:
                last_ckpt = self.save(done)
            if main:
                self._call("on_step_end", done)
            t_mark = time.perf_counter()
        bar.close()
        if main:
            self._call("on_train_end")
            self.log.close()
        acc.wait_for_everyone()
        return last_ckpt or latest_checkpoint(self.run_dir)

    def save(self, step: int) -> Path | None:
        """Checkpoint every module, optimizer and the EMA (written by the main process; all processes must call
        it: they gather the sharded weights together)."""
        self.acc.wait_for_everyone()
        modules, optimizers, head_state = self._states()
        rng = self._rng_states()
        if not self.acc.is_main_process:
            return None
        ckpt = save_checkpoint(self.run_dir, step, self.policy, modules, optimizers, self.ema, self.cfg.to_dict(),
                               self.data_info, head_state=head_state, rng=rng)
        prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        self._call("on_save", step, ckpt)
        return ckpt

    def _states(self) -> tuple[dict, dict, dict | None]:
        """State dicts of every module and optimizer, and the policy head's weights; the sharded ones gathered
        into full tensors on the CPU (a collective)."""
        modules = self._unwrapped()
        optimizers = {name: opt.state_dict() for name, opt in self.optimizers.items() if name not in self.sharded}
        states = {name: m.state_dict() for name, m in modules.items() if name not in self.sharded}
        if not self.sharded:
            return states, optimizers, None
        from robopolicy.train.sharding import full_model_state, full_optimizer_state

        for name in self.sharded:
            states[name] = full_model_state(modules[name])
            if name in self.optimizers:
                optimizers[name] = full_optimizer_state(modules[name], self.optimizers[name])
        prefix = "head."
        head_state = {k[len(prefix):]: v for k, v in states[POLICY].items() if k.startswith(prefix)}
        return states, optimizers, head_state

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every process's generator states (a collective): each resumes its own stream."""
        if self.acc.num_processes == 1:
            return rng_state()
        from accelerate.utils import gather_object

        out = {}
        for rank, states in enumerate(gather_object([rng_state()])):
            out.update({(k if rank == 0 else f"rank{rank}.{k}"): v for k, v in states.items()})
        return out

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Tensorboard / wandb scalars from a callback (main process)."""
        if self.log is not None:
            self.log.scalars(step, values)

    def _gather(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean over processes of each scalar, as floats."""
        stacked = torch.stack([v.detach().float().reshape(()).to(self.acc.device) for v in values.values()])
        return dict(zip(values, self.acc.reduce(stacked, "mean").tolist()))

    def _lr(self) -> float:
        opt = self.optimizers.get(POLICY) or next(iter(self.optimizers.values()))
        return opt.param_groups[0]["lr"]

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def train(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None, rule: UpdateRule | None = None,
          callbacks: Sequence[Callback] = (), policy: Policy | None = None) -> Path:
    """Train (`policy`: start from this one instead of a fresh one) and return the last checkpoint directory
    (see `Trainer`)."""
    return Trainer(cfg, rule=rule, callbacks=callbacks, resume=resume, stop_after=stop_after, policy=policy).run()


def _plain(episodes) -> list[int] | None:
    return None if episodes is None else [int(e) for e in episodes]
