"""MoE-ACT head: ACT's CVAE whose decoded action tokens h (B, H, d) go through a phase head and phase-routed experts.

    logits = phase_head(h)                        (B, H, K)   one phase distribution per chunk step
    w      = softmax(logits / T)                  (B, H, K)   soft routing, T = max(exp(log T), 0.01) learned, T0 10
    pos    = sum_k w_k position_expert_k(h)       (B, H, D_pos)
    grip   = sum_k w_k gripper_expert_k(h)        (B, H, D_grip)  logits of "closed"

Every MLP (phase head, experts) is LayerNorm -> Linear -> SiLU -> dropout -> Linear, as in the authors' VersatIL
`MLPBlock` heads; the K experts of a head are deep copies with independently re-initialized weights.

Loss per chunk step (padded steps zeroed), as the authors weight it:
    position_weight * L1(pos, a_pos) + gripper_weight * BCE(grip, a_grip > threshold)
    + phase_weight * CE_smoothed(logits, phase label) + kl_weight * KL(q(z | a, s) || N(0, I))
and batch-level auxiliaries: - entropy_weight * mean H(softmax(logits)) over unpadded steps (the authors maximize
the phase entropy "to avoid experts collapse"), + balance_weight * K * sum_k f_k P_k (Switch load balance; f_k the
fraction of steps whose top expert is k, P_k the mean routing weight; off by default). Inference (z = 0) needs no
labels: the routing comes from the predicted phases. `phase_report` gives the phase confusion matrix and the expert
usage per true phase over a stream of batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.config_parsing import ConfigError
from robopolicy.policies.act.modeling import ACTHead
from robopolicy.policies.base import LossOutput
from robopolicy.policies.moe_act.configuration import MoEACTConfig

MIN_TEMPERATURE = 1e-2  # floor of the routing temperature: exp(log T) must not underflow to 0 (logits / 0)


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """LayerNorm -> Linear(d_in, hidden) -> SiLU -> Dropout -> Linear(hidden, d_out): (..., d_in) -> (..., d_out)."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))


class Experts(nn.Module):
    """K deep copies of one MLP, each re-initialized independently; (..., d) -> (..., K, out)."""

    def __init__(self, base: nn.Module, k: int):
        super().__init__()
        self.experts = nn.ModuleList(copy.deepcopy(base) for _ in range(k))
        for expert in self.experts:
            for module in expert.modules():
                if module is not expert and hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(h) for expert in self.experts], dim=-2)


def mix(weights: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Soft mixture sum_k w_k y_k: weights (..., K), expert outputs (..., K, out) -> (..., out)."""
    return (weights[..., None] * outputs).sum(-2)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dim: (..., K) -> (...)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def load_balance(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer balance K * sum_k f_k P_k over the valid steps: f_k the fraction whose top expert is k
    (no gradient), P_k the mean routing weight of expert k; 1 when balanced. weights (B, H, K), valid (B, H)."""
    k = weights.shape[-1]
    v = valid.to(weights.dtype)[..., None]
    n = v.sum().clamp_min(1.0)
    top = F.one_hot(weights.argmax(-1), k).to(weights.dtype)
    return k * ((top * v).sum((0, 1)) / n * (weights * v).sum((0, 1)) / n).sum()


class MoEACTHead(ACTHead):
    config_class = MoEACTConfig

    def _build_output(self) -> None:
        """Phase head, routing temperature, position / gripper experts and the gripper levels (replace ACT's
        action_out)."""
        c: MoEACTConfig = self.config
        d, k = c.dim_model, c.num_phases
        if k < 1:
            raise ConfigError("moe_act: num_phases is not set; a policy created from a dataset reads it from the "
                              "names of its phase feature (Policy.from_dataset), else set policy.num_phases to the "
                              "number of phases K (experts per MoE head)")
        self.register_buffer("position_index", torch.tensor(c.position_index, dtype=torch.long), persistent=False)
        self.register_buffer("gripper_index", torch.tensor(c.gripper_index, dtype=torch.long), persistent=False)
        self.phase_head = mlp(d, c.phase_hidden, k, c.dropout)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(c.initial_temperature)))
        n_pos, n_grip = len(c.position_index), len(c.gripper_index)
        self.position_experts = Experts(mlp(d, c.position_expert_hidden, n_pos, c.dropout), k) if n_pos else None
        self.gripper_experts = Experts(mlp(d, c.gripper_expert_hidden, n_grip, c.dropout), k) if n_grip else None
        # mean normalized gripper target of each class (row 0 open, row 1 closed) and how many targets it averages
        self.register_buffer("gripper_levels", torch.tensor([-1.0, 1.0])[:, None].repeat(1, n_grip))
        self.register_buffer("gripper_counts", torch.zeros(2, n_grip, dtype=torch.long))

    @property
    def temperature(self) -> torch.Tensor:
        """Routing temperature T = exp(log T), floored at MIN_TEMPERATURE: positive whatever the optimizer does."""
        return self.log_temperature.exp().clamp_min(MIN_TEMPERATURE)

    def _moe(self, h: torch.Tensor, *, detach_phase_input: bool = False) -> dict[str, torch.Tensor]:
        """Action tokens (..., d) -> {"logits": phase logits (..., K), "weights": routing weights (..., K),
        "position": (..., D_pos), "gripper": gripper logits (..., D_grip)} (absent keys: no such dims)."""
        logits = self.phase_head(h.detach() if detach_phase_input else h)
        weights = (logits / self.temperature).softmax(-1)
        out = {"logits": logits, "weights": weights}
        if self.position_experts is not None:
            out["position"] = mix(weights, self.position_experts(h))
        if self.gripper_experts is not None:
            out["gripper"] = mix(weights, self.gripper_experts(h))
        return out

    def _actions(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The normalized chunk (..., D): position dims as predicted, gripper dims the expected command between
        the open and closed levels under p(closed) = sigmoid(logit)."""
        weights = out["weights"]
        actions = weights.new_zeros(*weights.shape[:-1], self.config.action_dim)
        if "position" in out:
            actions[..., self.position_index] = out["position"]
        if "gripper" in out:
            low, high = self.gripper_levels.to(weights.dtype)
            actions[..., self.gripper_index] = low + out["gripper"].sigmoid() * (high - low)
        return actions

    def route(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference routing (z = 0) for normalized observations: phase logits and routing weights (B, H, K)."""
        out = self._moe(self._decode_condition(self.encode(obs)))
        return out["logits"], out["weights"]

    def sample_from_condition(self, cond: torch.Tensor, *, generator: torch.Generator | None = None,
                              guide=None) -> torch.Tensor:
        """Memory (B, T, d) -> normalized chunks (B, H, D), routed by the predicted phases; deterministic (z = 0)."""
        return self._actions(self._moe(self._decode_condition(cond)))

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c: MoEACTConfig = self.config
        actions = batch[c.action_key]
        pad = batch.get(f"{c.action_key}_is_pad")
        valid = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device) if pad is None else ~pad
        z, kl = self._latent(batch, actions, pad)
        hidden, layout = self._decode_hidden(batch, z, pad)
        out = self._moe(hidden, detach_phase_input=c.phase_stop_gradient)
        if layout is not None:  # the CPU kernels decoded the unpadded steps only: zeros elsewhere (masked below)
            out = {k: layout.unpack(v) for k, v in out.items()}
        vf = valid.to(actions.dtype)
        zero = actions.new_zeros(actions.shape[:2])
        l1 = (F.l1_loss(out["position"], actions[..., self.position_index], reduction="none").mean(-1) * vf
              if "position" in out else zero)
        bce = zero
        if "gripper" in out:
            closed = actions[..., self.gripper_index] > c.gripper_threshold
            bce = F.binary_cross_entropy_with_logits(out["gripper"], closed.to(actions.dtype),
                                                     reduction="none").mean(-1) * vf
            if self.training:
                self._track_gripper_levels(actions[..., self.gripper_index], closed, valid)
        ce, labelled, correct = self._phase_loss(batch, out["logits"], valid)
        per_step = c.position_weight * l1 + c.gripper_weight * bce + c.phase_weight * ce + c.kl_weight * kl[:, None]

        n_valid = vf.sum().clamp_min(1.0)
        phase_entropy = (entropy(out["logits"]) * vf).sum() / n_valid
        balance = load_balance(out["weights"], valid)
        aux = {}
        if c.entropy_weight:
            aux["phase_entropy"] = -c.entropy_weight * phase_entropy
        if c.balance_weight:
            aux["load_balance"] = c.balance_weight * balance
        usage = (out["weights"] * vf[..., None]).sum((0, 1)).detach() / n_valid
        n_labelled = labelled.to(actions.dtype).sum().clamp_min(1.0)
        metrics = {"l1": l1.detach().sum() / n_valid, "bce": bce.detach().sum() / n_valid, "kl": kl.detach().mean(),
                   "phase_ce": ce.detach().sum() / n_labelled, "phase_accuracy": correct.sum() / n_labelled,
                   "phase_entropy": phase_entropy.detach(), "load_balance": balance.detach(),
                   "temperature": self.temperature.detach(),
                   **{f"expert_usage/{k}": usage[k] for k in range(c.num_phases)}}
        return LossOutput(per_step, valid=None if pad is None else valid, aux=aux, metrics=metrics)

    def _phase_loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, valid: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Label-smoothed phase CE per step (B, H) (zero where unlabelled), the labelled mask (B, H) and the
        correct-prediction mask (B, H) float, detached. No phase key: no supervision (zeros)."""
        c: MoEACTConfig = self.config
        if not c.phase_key:
            none = torch.zeros_like(valid)
            return logits.new_zeros(valid.shape), none, none.to(logits.dtype)
        if c.phase_key not in batch:
            raise KeyError(f"moe_act: the training batch has no phase labels {c.phase_key!r} (a per-frame int64 "
                           "dataset feature loaded at the action offsets, see delta_indices()); record phase labels "
                           "or set phase_key='' to train the routing without phase supervision")
        labels = batch[c.phase_key].reshape(valid.shape).long()
        labelled = valid & (labels >= 0)
        phase_pad = batch.get(f"{c.phase_key}_is_pad")
        if phase_pad is not None:
            labelled = labelled & ~phase_pad
        target = labels.clamp_min(0)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=c.label_smoothing,
                             reduction="none").view(valid.shape)
        mask = labelled.to(logits.dtype)
        correct = (logits.detach().argmax(-1) == target).to(logits.dtype) * mask
        return ce * mask, labelled, correct

    @torch.no_grad()
    def _track_gripper_levels(self, targets: torch.Tensor, closed: torch.Tensor, valid: torch.Tensor) -> None:
        """Fold this batch's normalized gripper targets (B, H, D_grip) into the running mean of each class."""
        v = valid[..., None]
        for row, members in enumerate((~closed & v, closed & v)):
            n = members.sum((0, 1))  # (D_grip,)
            total = (targets * members).sum((0, 1)).to(self.gripper_levels.dtype)
            count = self.gripper_counts[row] + n
            mean = self.gripper_levels[row]
            step = torch.where(n > 0, (total - n * mean) / count.clamp_min(1), torch.zeros_like(mean))
            self.gripper_levels[row] = mean + step
            self.gripper_counts[row] = count


@dataclass
class PhaseReport:
    """What the routing does per true phase, over the unpadded, labelled chunk steps of a stream of batches.

    confusion: (K, K) int64 counts, row = true phase, column = predicted phase (argmax of the phase logits);
    usage: (K, K) mean routing weight of each expert (column) on the steps of each true phase (row), rows of
    phases never seen are 0; names: the phase vocabulary (the dataset feature's names), when given.
    """

    confusion: torch.Tensor
    usage: torch.Tensor
    names: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        total = int(self.confusion.sum())
        return float(self.confusion.diagonal().sum()) / total if total else float("nan")

    @property
    def support(self) -> torch.Tensor:
        """(K,) labelled steps per true phase."""
        return self.confusion.sum(1)


@torch.no_grad()
def phase_report(policy, batches: Iterable[Mapping], names: Sequence[str] = ()) -> PhaseReport:
    """Phase confusion and expert usage per true phase of a moe_act `policy` (robopolicy.policies.policy.Policy) at
    inference (eval mode, z = 0) over raw sampler batches (WindowSampler.get_batch: they carry the phase labels);
    the policy's train/eval mode is restored afterwards."""
    head: MoEACTHead = policy.head
    c: MoEACTConfig = head.config
    if not c.phase_key:
        raise ValueError("phase_report needs phase labels: this moe_act policy was configured with phase_key=''")
    k = c.num_phases
    confusion = torch.zeros(k * k, dtype=torch.long)
    usage = torch.zeros(k, k, dtype=torch.float64)
    was_training = policy.training
    policy.eval()
    try:
        for raw in batches:
            batch = policy.prepare(raw)
            logits, weights = head.route(batch)
            labels = batch[c.phase_key].reshape(logits.shape[:2]).long()
            keep = labels >= 0
            for key in (c.action_key, c.phase_key):
                pad = batch.get(f"{key}_is_pad")
                keep = keep if pad is None else keep & ~pad
            true, pred = labels[keep].cpu(), logits.argmax(-1)[keep].cpu()
            if true.numel() and int(true.max()) >= k:
                raise ValueError(f"phase label {int(true.max())} outside [0, {k}) (num_phases={k})")
            confusion += torch.bincount(true * k + pred, minlength=k * k)
            usage.index_add_(0, true, weights[keep].cpu().double())
    finally:
        policy.train(was_training)
    confusion = confusion.view(k, k)
    usage = (usage / confusion.sum(1, keepdim=True).clamp_min(1)).float()
    return PhaseReport(confusion, usage, tuple(names))
