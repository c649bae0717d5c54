"""Discrete Diffusion VLA head: L_CE = - sum_{i in M} log p(a_i | masked chunk, observation) / L on the action
positions only (M: ceil(gamma L) positions, gamma = cos(pi r / 2)); T rounds of parallel decoding at inference.

Actions (B, H, D) in [-1, 1] (quantile-normalized by the policy) <-> tokens (B, H, D) via ActionTokenizer; the L = H * D
positions are step-major. `encode(obs)` is the backbone's prefix (camera, instruction and state tokens), computed
once per observation; `sample_from_condition` runs the prefix pass once (its keys / values cached) and then
`decoding.rounds` rounds over the action tokens (NFE = T; `left_to_right`: NFE = L).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.base import LANGUAGE, TOKENIZED_ACTIONS, Guide, LossOutput, PolicyHead
from robopolicy.policies.common.action_tokenizer import ActionTokenizer
from robopolicy.policies.common.masked_decoding import decode, sample_training_mask
from robopolicy.policies.dd_vla.backbone import make_backbone
from robopolicy.policies.dd_vla.configuration import DDVLAConfig


def _batch_size(cond: Any) -> int:
    return (cond if torch.is_tensor(cond) else cond["embeds"]).shape[0]


class DDVLAHead(PolicyHead):
    """Masked-token action chunks over a "small" or "vlm" backbone (see configuration.py).

    TOKENIZED_ACTIONS: `tokenizer` maps normalized chunks (B, H, D) <-> tokens and `token_logits(cond, tokens)`
    scores a (partly masked) token chunk (B, H, D) -> (B, H, D, bins)."""

    config_class = DDVLAConfig
    capabilities = frozenset({LANGUAGE, TOKENIZED_ACTIONS})

    def __init__(self, config: DDVLAConfig):
        super().__init__(config)
        self.tokenizer = ActionTokenizer(config.action_dim, config.bins, config.gripper_dims)
        self.backbone = make_backbone(config)

    @property
    def mask_token(self) -> int:
        return self.tokenizer.mask_token

    def encode(self, obs: dict[str, Any]) -> Any:
        """The observation prefix: (B, P, dim) tokens ("small"), or {"embeds": (B, P, width), "valid": (B, P)}
        ("vlm": instruction padding is not attended to)."""
        return self.backbone.prefix(obs)

    def token_logits(self, cond: Any, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded observations + tokens (B, H, D) ([MASK] = bins where unknown) -> logits (B, H, D, bins)."""
        logits = self.backbone.train_logits(cond, tokens.flatten(1))
        return logits.view(*tokens.shape, self.config.bins)

    def loss(self, batch: dict[str, Any]) -> LossOutput:
        """Per chunk step (B, H): cross-entropy summed over the masked tokens of the step / D; padded steps are
        [MASK] in the input and 0 in the loss."""
        c = self.config
        actions = batch[c.action_key]
        b, h, d = actions.shape
        target = self.tokenizer.encode(actions).flatten(1)  # (B, L)
        masked = sample_training_mask(b, c.num_tokens, device=actions.device)
        pad = batch.get(f"{c.action_key}_is_pad")
        counted = masked if pad is None else masked & ~pad.repeat_interleave(d, dim=1)
        if pad is not None:
            masked = masked | pad.repeat_interleave(d, dim=1)  # padded steps are never shown as known tokens
        inputs = torch.where(masked, torch.full_like(target, self.mask_token), target)
        logits = self.backbone.train_logits(self.encode(batch), inputs)  # (B, L, bins)
        wide = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits in float32, float64 stays
        ce = F.cross_entropy(logits.flatten(0, 1).to(wide), target.flatten(), reduction="none").view(b, -1)
        weight = counted.to(ce.dtype)
        per_step = (ce * weight).view(b, h, d).sum(-1) / d
        with torch.no_grad():
            hits = (logits.argmax(-1) == target).to(ce.dtype) * weight
            accuracy = hits.sum() / weight.sum().clamp_min(1.0)
        return LossOutput(per_step, valid=None if pad is None else ~pad,
                          metrics={"masked_accuracy": accuracy, "mask_ratio": masked.float().mean().detach()})

    @torch.no_grad()
    def sample_from_condition(self, cond: Any, *, generator: torch.Generator | None = None,
                              guide: Guide | None = None) -> torch.Tensor:
        """Parallel decoding of L tokens from [MASK] (config.decoding) -> bin centres (B', H, D) in [-1, 1], in
        the prefix's dtype and on its device."""
        c = self.config
        prefix = cond if torch.is_tensor(cond) else cond["embeds"]
        b = _batch_size(cond)
        state = self.backbone.start(cond)
        tokens = decode(lambda t: self.backbone.round_logits(state, t), b, c.num_tokens, self.mask_token,
                        c.decoding, device=prefix.device, generator=generator)
        return self.tokenizer.decode(tokens.view(b, c.horizon, c.action_dim), dtype=prefix.dtype).clamp(-1.0, 1.0)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Two groups: the backbone's pretrained parts (lr `backbone_lr`) and the new parts (action embedding,
        output head, state MLP, the small transformer; lr `head_lr`); a null lr is the optimizer's."""
        pretrained = {id(p) for p in self.backbone.pretrained_parameters()}
        groups = []
        for name, lr, inside in (("backbone", self.config.backbone_lr, True), ("head", self.config.head_lr, False)):
            params = [p for p in self.parameters() if p.requires_grad and (id(p) in pretrained) == inside]
            if params:
                groups.append({"params": params, "name": name, **({"lr": lr} if lr is not None else {})})
        return groups

    def fsdp_layer_classes(self) -> set[type[nn.Module]]:
        """The repeated blocks FSDP shards one by one (then the head as a whole)."""
        return self.backbone.layer_classes()


def fsdp_plugin(head: DDVLAHead, **options: Any):
    """accelerate's FSDP2 plugin that shards `head`'s repeated blocks (the VLM's vision and language layers, or
    the small transformer's blocks) one by one and the rest at the root: `Accelerator(fsdp_plugin=...)`. On a CPU
    accelerate runs DDP instead (Accelerator(cpu=True) never selects FSDP); torch's `fully_shard` over
    `head.fsdp_layer_classes()` is the same sharding there (tests/policies/test_dd_vla.py)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    names = sorted(cls.__name__ for cls in head.fsdp_layer_classes())
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=names, **options)


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """{module name: peft LoRA layer} inside `module` ({} without peft or LoRA)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def merged_lora_state_dict(head: DDVLAHead) -> dict[str, torch.Tensor]:
    """The head's state dict with every LoRA adapter added into its base weight (W + scale * B A), the adapter
    tensors dropped and `.base_layer.` removed from the names: the weights of the same head without LoRA."""
    deltas = {}
    for name, layer in lora_layers(head).items():
        for adapter in layer.active_adapters:
            key = f"{name}.base_layer.weight"
            deltas[key] = deltas.get(key, 0) + layer.get_delta_weight(adapter)
    out = {}
    for key, value in head.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = (value + deltas[key].to(value.dtype)) if key in deltas else value
    return out


def merge_lora(policy):
    """A copy of a dd_vla `Policy` with its LoRA adapters merged into the backbone (vlm.lora_rank = 0): the
    same chunks, no adapter cost at inference; merge on the deployment device and dtype (the paper's repo notes
    that merged weights differ across GPU types)."""
    import dataclasses

    from robopolicy.policies.policy import Policy

    head = policy.head
    config = policy.config.replace(vlm=dataclasses.replace(policy.config.vlm, lora_rank=0))
    merged = Policy(config, policy.normalizer, policy.processor)
    merged.head.load_state_dict(merged_lora_state_dict(head))
    return merged.to(head.device, head.dtype).train(policy.training)
