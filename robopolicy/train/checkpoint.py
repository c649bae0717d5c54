"""Resumable training state as plain files (safetensors + JSON, no pickles).

checkpoints/step_NNNNNN/
  config.json  model.safetensors (EMA weights when EMA is on)  stats.json      <- a loadable policy
  train_config.json                                                            <- the run's TrainConfig
  train_state/ modules/<name>.safetensors      every module of the update rule (policy: live weights)
               optimizers/<name>.safetensors   every optimizer's state tensors
               rng.safetensors  state.json     step, EMA step, optimizer param groups, the dataset trained on
checkpoints/last  (text file naming the newest complete step directory)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from robopolicy.policies.policy import (
    STATS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointNotFoundError,
    Policy,
    checkpoint_from_last,
    plain_tensors,
    read_json,
    read_stats,
    read_weights,
    weights_mismatch,
)
from robopolicy.train.ema import EMA

RESUME_HINT = ("point checkpoints/last at an earlier step_* directory (write its name into the file), or start a "
               "new run (another --train.output_dir, or --train.overwrite=true)")


class ResumeMismatchError(ValueError):
    """The run would resume on other data or stats than its checkpoint was trained with."""


class ResumeError(CheckpointError):
    """A checkpoint whose training state cannot be restored (missing, corrupt or of another run's shape)."""


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _optimizer_to_files(sd: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict (torch's layout, indexed by parameter position) as tensors + JSON metadata."""
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return _cpu(tensors), {"param_groups": sd["param_groups"]}


def _optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                          source: Path) -> dict:
    """The optimizer state dict saved by _optimizer_to_files, checked against `opt`'s parameters (a ResumeError
    naming `source` when it does not fit); `opt.load_state_dict` takes it (torch moves each state tensor to its
    parameter's device)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for key, value in tensors.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        for idx, entry in state.items():
            for name, value in entry.items():
                if value.dim() > 0 and tuple(value.shape) != tuple(params[idx].shape):
                    raise ValueError(f"state {idx}.{name} has shape {tuple(value.shape)}, its parameter "
                                     f"{tuple(params[idx].shape)}")
        groups = meta["param_groups"]
        if len(groups) != len(opt.param_groups) or any(len(g["params"]) != len(mine["params"])
                                                       for g, mine in zip(groups, opt.param_groups)):
            raise ValueError(f"{[len(g['params']) for g in groups]} parameters per group, this run's optimizer has "
                             f"{[len(g['params']) for g in opt.param_groups]}")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise _optimizer_misfit(source, e) from None
    return {"state": state, "param_groups": groups}


def _optimizer_misfit(source: Path, error: Exception) -> ResumeError:
    return ResumeError(f"{source}: optimizer state does not fit this run's optimizer ({error}); {RESUME_HINT}")


def save_checkpoint(
    run_dir: Path, step: int, policy: Policy, modules: Mapping[str, Mapping[str, torch.Tensor]],
    optimizers: Mapping[str, Mapping], ema: EMA | None, train_config: dict, data: dict,
    head_state: Mapping[str, torch.Tensor] | None = None, rng: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write step_<step>/ atomically (temp dir + rename) and point checkpoints/last at it.

    modules / optimizers: state dicts by name (the policy's among the modules; optimizers in torch's layout);
    head_state: the weights model.safetensors holds when there is no EMA (default: the head's live weights; an
    FSDP run passes the gathered ones); data: what identifies the dataset (see `check_resume_data`); rng: the
    generator states (default: this process's, `rng_state()`; several processes: `rng_state()` of each, the
    keys of rank r > 0 prefixed "rank<r>.")."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp, state_dict=ema.state_dict() if ema is not None else head_state)
    (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2))
    ts = tmp / "train_state"
    (ts / "modules").mkdir(parents=True)
    (ts / "optimizers").mkdir()
    for name, weights in modules.items():
        save_file(plain_tensors(weights), str(ts / "modules" / f"{name}.safetensors"))
    opt_meta = {}
    for name, opt_state in optimizers.items():
        tensors, opt_meta[name] = _optimizer_to_files(opt_state)
        save_file(tensors, str(ts / "optimizers" / f"{name}.safetensors"))
    save_file(dict(rng or rng_state()), str(ts / "rng.safetensors"))
    state = {"step": step, "ema_step": ema.step if ema is not None else None, "optimizers": opt_meta, "data": data}
    (ts / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (ckpt_root / "last.tmp").write_text(final.name)
    os.replace(ckpt_root / "last.tmp", ckpt_root / "last")
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the `keep` newest step_<N>/ checkpoints of a run (after `last` points at the newest);
    only complete step directories of this layout are touched. Returns the removed ones."""
    ckpt_root = Path(run_dir) / "checkpoints"
    steps = sorted((p for p in ckpt_root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    last = (ckpt_root / "last").read_text().strip() if (ckpt_root / "last").is_file() else None
    removed = [p for p in steps[:-keep] if p.name != last] if keep > 0 else []
    for p in removed:
        shutil.rmtree(p)
    return removed


def rng_state() -> dict[str, torch.Tensor]:
    """This process's generator states: "torch" (CPU) and "cuda<i>" per visible GPU."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The step directory checkpoints/last names, or None when there is none (or it is unreadable)."""
    try:
        return checkpoint_from_last(Path(run_dir))
    except CheckpointNotFoundError:
        return None


def resume_checkpoint(run_dir: Path) -> Path:
    """The checkpoint `--resume` continues from: what <run_dir>/checkpoints/last names, or a
    CheckpointNotFoundError (a FileNotFoundError) saying what is missing."""
    if not (Path(run_dir) / "checkpoints").is_dir():
        raise CheckpointNotFoundError(f"--resume: no checkpoint under {Path(run_dir) / 'checkpoints'} (no such "
                                      "directory); train without --resume first, or set --train.output_dir to "
                                      "the run to continue")
    try:
        return checkpoint_from_last(Path(run_dir))
    except CheckpointNotFoundError as e:
        raise CheckpointNotFoundError(f"--resume: no checkpoint to continue from: {e}") from None


def _train_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "train_state" / "state.json"
    if not path.exists():
        raise CheckpointNotFoundError(f"{ckpt}: no train_state/state.json; this checkpoint cannot be resumed "
                                      f"({RESUME_HINT})")
    state = read_json(path, "training state")
    if not isinstance(state, dict) or "optimizers" not in state:
        raise ResumeError(f"{path}: not a training state of this version (a mapping with 'step', 'optimizers', "
                          f"'data'); this checkpoint cannot be resumed ({RESUME_HINT})")
    for key, kind in (("step", int), ("optimizers", dict), ("data", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise ResumeError(f"{path}: field {key!r} is {'missing' if key not in state else repr(state[key])}, "
                              f"must be {kind.__name__}; the file is damaged ({RESUME_HINT})")
    return state


def check_resume_data(ckpt: Path, policy: Policy, data: dict) -> None:
    """Refuse to resume on another dataset (root, episodes, frame counts) or other normalizer stats than `ckpt`
    was trained with, naming each difference (a changed dataset would otherwise be silently renormalized)."""
    saved = _train_state(ckpt).get("data", {})
    diffs = [f"{k}: checkpoint {saved[k]!r}, now {data.get(k)!r}" for k in sorted(saved) if saved[k] != data.get(k)]
    before = read_stats(Path(ckpt) / STATS_FILE, policy.config).stats
    now = policy.normalizer.stats
    for key in sorted(set(before) | set(now)):
        if key not in before or key not in now:
            diffs.append(f"stats for {key!r}: {'only in the checkpoint' if key in before else 'new'}")
            continue
        changed = [s for s in sorted(set(before[key]) | set(now[key]))
                   if s not in before[key] or s not in now[key] or before[key][s].shape != now[key][s].shape
                   or not np.allclose(before[key][s], now[key][s], rtol=1e-6, atol=1e-9)]
        if changed:
            diffs.append(f"stats for {key!r} differ in {changed}")
    if diffs:
        raise ResumeMismatchError(
            f"cannot resume from {ckpt}: the data differs from what it was trained on ({'; '.join(diffs)}). "
            "Resume with the same data.uri and data.episodes, or start a new run (another --train.output_dir)"
        )


def load_train_state(
    ckpt: Path, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer], ema: EMA | None,
    sharded: Collection[str] = (), rank: int = 0,
) -> int:
    """Restore every module, optimizer, the EMA and the RNG from `ckpt` (modules unwrapped, on any device); returns
    the step to continue from. `sharded`: names of FSDP-sharded modules (their optimizer has the same name); the
    full tensors are scattered into them (robopolicy.train.sharding). `rank`: this process, which continues its
    own generator stream when the checkpoint holds one for it (else rank 0's)."""
    ts = Path(ckpt) / "train_state"
    state = _train_state(ckpt)
    saved_modules = sorted(p.stem for p in (ts / "modules").glob("*.safetensors"))
    if saved_modules != sorted(modules) or sorted(state["optimizers"]) != sorted(optimizers):
        raise ResumeMismatchError(
            f"cannot resume from {ckpt}: it holds modules {saved_modules} and optimizers {sorted(state['optimizers'])}"
            f", this run has {sorted(modules)} and {sorted(optimizers)}"
        )
    # read and check every file before changing anything, so a damaged checkpoint leaves the run as it was
    module_weights = {name: _read(ts / "modules" / f"{name}.safetensors", f"{name!r} module weights")
                      for name in modules}
    for name, module in modules.items():
        _check_fits(module.state_dict(), module_weights[name], ts / "modules" / f"{name}.safetensors")
    opt_tensors = {name: _read(ts / "optimizers" / f"{name}.safetensors", f"{name!r} optimizer state")
                   for name in optimizers}
    ema_weights = _read(Path(ckpt) / WEIGHTS_FILE, "EMA weights") if ema is not None else None
    if ema is not None:
        _check_fits(ema.shadow, ema_weights, Path(ckpt) / WEIGHTS_FILE)
    rng = _read(ts / "rng.safetensors", "RNG state")
    if "torch" not in rng or rng["torch"].dtype != torch.uint8:
        raise ResumeError(f"{ts / 'rng.safetensors'}: no 'torch' generator state (uint8); the file is damaged "
                          f"({RESUME_HINT})")
    opt_states = {name: _optimizer_from_files(opt, opt_tensors[name], state["optimizers"][name],
                                              ts / "optimizers" / f"{name}.safetensors")
                  for name, opt in optimizers.items()}
    if sharded:
        from robopolicy.train.sharding import load_full_model_state, load_full_optimizer_state
    for name, module in modules.items():
        if name in sharded:
            load_full_model_state(module, module_weights[name])
        else:
            module.load_state_dict(module_weights[name])
    for name, opt in optimizers.items():
        try:
            if name in sharded:
                load_full_optimizer_state(modules[name], opt, opt_states[name])
            else:
                opt.load_state_dict(opt_states[name])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _optimizer_misfit(ts / "optimizers" / f"{name}.safetensors", e) from None
    if ema is not None:
        for k, v in ema.shadow.items():
            v.copy_(ema_weights[k])
        ema.step = state.get("ema_step") or 0
    prefix = f"rank{rank}." if rank and f"rank{rank}.torch" in rng else ""
    try:
        torch.set_rng_state(rng[prefix + "torch"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith(prefix + "cuda")])
    except RuntimeError as e:
        raise ResumeError(f"{ts / 'rng.safetensors'}: RNG state rejected by torch ({e}); {RESUME_HINT}") from None
    return int(state["step"])


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file of the training state, or a ResumeError naming it (missing, truncated, corrupt)."""
    try:
        return read_weights(path, what)
    except CheckpointError as e:
        raise ResumeError(f"cannot resume: {e}") from None


def _check_fits(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: Path) -> None:
    mismatch = weights_mismatch(expected, found)
    if mismatch:
        raise ResumeError(f"cannot resume from {source}: {mismatch} (the run's config differs from the one the "
                          f"checkpoint was trained with: resume with the same preset and overrides, or {RESUME_HINT})")
