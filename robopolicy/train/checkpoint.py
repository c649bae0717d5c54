"""Resumable training state as plain files (safetensors + JSON, no pickles).

checkpoints/step_NNNNNN/
  config.json  model.safetensors (EMA weights when EMA is on)  stats.json      <- a loadable policy
  train_config.json                                                            <- the run's TrainConfig
  train_state/ live.safetensors  optimizer.safetensors  rng.safetensors  state.json
checkpoints/last  (text file naming the newest complete step directory)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from robopolicy.policies.policy import Policy
from robopolicy.train.ema import EMA


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    run_dir: Path, step: int, policy: Policy, optimizer: torch.optim.Optimizer, ema: EMA | None, train_config: dict
) -> Path:
    """Write step_<step>/ atomically (temp dir + rename) and point checkpoints/last at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp, state_dict=ema.state_dict() if ema is not None else None)
    (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2))
    ts = tmp / "train_state"
    ts.mkdir()
    live = {k: v.detach().cpu().contiguous() for k, v in policy.head.state_dict().items()}
    save_file(live, str(ts / "live.safetensors"))
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_file(opt_tensors, str(ts / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(ts / "rng.safetensors"))
    state = {"step": step, "ema_step": ema.step if ema is not None else None, "optimizer": opt_meta}
    (ts / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (ckpt_root / "last.tmp").write_text(final.name)
    os.replace(ckpt_root / "last.tmp", ckpt_root / "last")
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    last = Path(run_dir) / "checkpoints" / "last"
    if not last.exists():
        return None
    path = last.parent / last.read_text().strip()
    return path if path.exists() else None


def load_train_state(
    ckpt: Path, policy: Policy, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> int:
    """Restore live weights, optimizer, EMA and RNG from `ckpt`; returns the step to continue from."""
    ts = Path(ckpt) / "train_state"
    if not (ts / "state.json").exists():
        raise FileNotFoundError(f"{ckpt}: no train_state/state.json; this checkpoint cannot be resumed")
    state = json.loads((ts / "state.json").read_text())
    policy.head.load_state_dict(load_file(str(ts / "live.safetensors")))
    _optimizer_from_files(optimizer, load_file(str(ts / "optimizer.safetensors")), state["optimizer"])
    if ema is not None:
        ema_weights = load_file(str(Path(ckpt) / "model.safetensors"))
        for k, v in ema.shadow.items():
            v.copy_(ema_weights[k])
        ema.step = state["ema_step"] or 0
    rng = load_file(str(ts / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    return int(state["step"])
