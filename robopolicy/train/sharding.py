"""FSDP2 for the trainer (`train.fsdp`): the policy's parameters, gradients and optimizer state sharded across the
launched processes (torch's `fully_shard`, the FSDP2 that accelerate's plugin drives, applied here so that the
same path runs on GPUs and, over gloo, on CPU processes, where accelerate refuses FSDP).

Units: every module of a class in `head.fsdp_layer_classes()` (a VLM's vision and language layers, a transformer's
blocks) is sharded on its own, then the policy as a whole (everything outside the blocks). Checkpoints hold the
full, unsharded tensors in the same files as an unsharded run: every process takes part in gathering them
(`full_model_state` / `full_optimizer_state`), the main process writes, and a resumed run scatters them again
(`load_full_model_state` / `load_full_optimizer_state`), with any number of processes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(module: nn.Module, layer_classes: set[type[nn.Module]]) -> int:
    """Broadcast the main process's weights (as DDP does: each process initialised its own), then fully_shard
    each module of `layer_classes` inside `module`, then `module` itself; returns the number of block units.
    `module` must already be on its device; build optimizers after this call."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    classes = tuple(layer_classes)
    blocks = [m for m in module.modules() if classes and isinstance(m, classes) and m is not module]
    for block in blocks:
        fully_shard(block)
    fully_shard(module)
    return len(blocks)


def _torch_optimizer(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch one


def _param_names(module: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The parameter names of `opt`'s parameters in its own order (the index a plain optimizer state uses)."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names[id(p)] for group in opt.param_groups for p in group["params"]]


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU of the main process (a collective: every process calls it; the
    others get an empty dict)."""
    return get_model_state_dict(module, options=FULL)


def full_optimizer_state(module: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The unsharded optimizer state in torch's plain layout (state and param_groups indexed by the parameter's
    position in the optimizer, as `opt.state_dict()` of an unsharded run; a collective: the processes other than
    the main one get an empty dict)."""
    opt = _torch_optimizer(opt)
    names = _param_names(module, opt)
    index = {name: i for i, name in enumerate(names)}
    full = get_optimizer_state_dict(module, opt, options=FULL)
    if not full:
        return {}
    groups, start = [], 0
    for group, mine in zip(full["param_groups"], opt.param_groups, strict=True):
        n = len(mine["params"])
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + n))})
        start += n
    return {"state": {index[name]: value for name, value in full["state"].items()}, "param_groups": groups}


def load_full_model_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Scatter an unsharded state dict into the sharded `module` (every process holds `state`)."""
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(module: nn.Module, opt: torch.optim.Optimizer, state: Mapping) -> None:
    """Load a plain-layout optimizer state (see `full_optimizer_state`) into the optimizer of the sharded
    `module`."""
    opt = _torch_optimizer(opt)
    names = _param_names(module, opt)
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [names[i] for i in group["params"]]}
              for group in state["param_groups"]]
    named = {"state": {names[int(i)]: value for i, value in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(module, opt, named, options=StateDictOptions(full_state_dict=True))
