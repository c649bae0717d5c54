"""MoE-ACT: phase-routed experts on ACT's decoded action tokens. Routing, temperature, losses and their gradients,
inference without labels, the phase labels' path dataset -> sampler -> Policy.prepare -> head, the checkpoint, and
the phase report (confusion matrix, expert usage per true phase)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.config_parsing import ConfigError
from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import Feature
from robopolicy.data.sampler import WindowSampler
from robopolicy.data.stats import compute_stats
from robopolicy.data.writer import create_writer
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.common import kernels
from robopolicy.policies.common.text_encoder import LanguageConfig
from robopolicy.policies.moe_act.configuration import MoEACTConfig
from robopolicy.policies.moe_act.modeling import load_balance, phase_report
from robopolicy.policies.policy import TASK_KEY, Policy
from robopolicy.policies.registry import available_policies, make_head

STATE = {"observation.state": FeatureSpec((4,), "state")}
ACTION = {"action": FeatureSpec((3,), "action")}  # 2 position dims + a gripper (the last dim)
PHASES = ("reach", "grasp", "lift")


def _head(**overrides):
    torch.manual_seed(0)
    return make_head(MoEACTConfig.for_tests(STATE, ACTION, **overrides))


def _batch(cfg: MoEACTConfig, b: int = 4, seed: int = 0) -> dict:
    """Fake batch whose phase labels follow the chunk step (0 0 0 0 1 1 1 1 2 2 ...): learnable from the queries."""
    batch = cfg.fake_batch(b, torch.Generator().manual_seed(seed))
    steps = torch.arange(cfg.horizon) * cfg.num_phases // cfg.horizon
    batch["phase"] = steps[None, :, None].expand(b, -1, -1).clone()
    return batch


def test_moe_act_is_a_builtin_head_whose_windows_include_the_phase_labels():
    assert "moe_act" in available_policies()
    cfg = MoEACTConfig.for_tests(STATE, ACTION)
    assert cfg.delta_indices()["phase"] == cfg.action_delta_indices == list(range(cfg.horizon))
    assert "phase" not in cfg.fake_obs(2)
    assert cfg.position_index == [0, 1] and cfg.gripper_index == [2]
    assert MoEACTConfig.for_tests(STATE, ACTION, gripper_dims=()).position_index == [0, 1, 2]
    assert "phase" not in MoEACTConfig.for_tests(STATE, ACTION, phase_key="").delta_indices()
    defaults = MoEACTConfig()  # the authors' preset
    assert (defaults.dim_model, defaults.n_heads, defaults.dim_feedforward, defaults.n_encoder_layers,
            defaults.n_decoder_layers, defaults.horizon, defaults.kl_weight) == (256, 8, 512, 6, 6, 10, 100.0)
    assert (defaults.phase_weight, defaults.label_smoothing, defaults.entropy_weight, defaults.balance_weight,
            defaults.gripper_weight, defaults.initial_temperature) == (0.1, 0.2, 0.1, 0.0, 0.05, 10.0)
    with pytest.raises(ConfigError, match="num_phases is not set"):
        make_head(MoEACTConfig.for_tests(STATE, ACTION, num_phases=0))
    with pytest.raises(ConfigError, match="gripper_dims"):
        MoEACTConfig.for_tests(STATE, ACTION, gripper_dims=(3,))


def test_shapes_routing_weights_sum_to_one_and_inference_needs_no_labels():
    head = _head()
    cfg = head.config
    batch = _batch(cfg, 3)
    out = head.train().loss(batch)
    assert out.per_sample.shape == (3, cfg.horizon) and torch.isfinite(out.per_sample).all()
    assert {f"expert_usage/{k}" for k in range(3)} <= set(out.metrics) and "phase_accuracy" in out.metrics
    usage = torch.stack([out.metrics[f"expert_usage/{k}"] for k in range(3)])
    torch.testing.assert_close(usage.sum(), torch.tensor(1.0))
    head.eval()
    obs = cfg.fake_obs(3)  # no labels
    logits, weights = head.route(obs)
    assert logits.shape == weights.shape == (3, cfg.horizon, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, cfg.horizon))
    chunk = head.sample(obs)
    assert chunk.shape == (3, cfg.horizon, 3)
    low, high = head.gripper_levels[:, 0]
    assert ((chunk[..., 2] >= low) & (chunk[..., 2] <= high)).all()  # the gripper: between open and closed


def test_temperature_starts_at_ten_is_learned_and_stays_positive():
    from robopolicy.policies.moe_act.modeling import MIN_TEMPERATURE

    head = _head()
    torch.testing.assert_close(head.temperature, torch.tensor(10.0))
    head.train().loss(_batch(head.config)).loss.backward()
    assert head.log_temperature.grad is not None and head.log_temperature.grad.abs() > 0
    opt = torch.optim.SGD([head.log_temperature], lr=1e4)
    for sign in (1.0, -1.0):  # huge steps either way: T = exp(log T) never flips sign nor underflows to 0
        head.log_temperature.grad = torch.full_like(head.log_temperature, sign)
        opt.step()
        assert head.temperature >= MIN_TEMPERATURE
        assert torch.isfinite(head.eval().route(head.config.fake_obs(1))[1]).all()


def test_phase_cross_entropy_decreases_on_a_tiny_overfit():
    head = _head(entropy_weight=0.0)
    batch = _batch(head.config, 4)
    opt = torch.optim.AdamW(head.parameters(), lr=5e-3)
    ce, acc = [], []
    head.train()
    for _ in range(30):
        out = head.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ce.append(out.metrics["phase_ce"].item())
        acc.append(out.metrics["phase_accuracy"].item())
    assert np.mean(ce[-5:]) < 0.8 * np.mean(ce[:3]), (ce[:3], ce[-5:])  # (floor with smoothing 0.2: 0.49)
    assert acc[-1] >= 0.7 and acc[-1] > acc[0], (acc[0], acc[-1])


def _phase_ce_grads(stop_gradient: bool) -> dict[str, torch.Tensor]:
    """Gradients of the phase CE alone (every other loss weight 0), by parameter name."""
    head = _head(phase_stop_gradient=stop_gradient, position_weight=0.0, gripper_weight=0.0, kl_weight=0.0,
                 entropy_weight=0.0, phase_weight=1.0).train()
    names, params = zip(*head.named_parameters())
    grads = torch.autograd.grad(head.loss(_batch(head.config)).loss, params, allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def _norm(grads: dict[str, torch.Tensor], prefix: str) -> float:
    return sum(g.abs().sum().item() for n, g in grads.items() if n.startswith(prefix))


def test_stop_gradient_keeps_the_phase_loss_out_of_the_shared_action_tokens():
    on, off = _phase_ce_grads(True), _phase_ce_grads(False)
    for grads in (on, off):
        assert _norm(grads, "phase_head.") > 0  # the phase head always learns from its labels
        # the experts never see the phase CE directly: phase supervision reaches them only through the routing
        assert _norm(grads, "position_experts.") == 0 and _norm(grads, "gripper_experts.") == 0
    # the tokens the experts read (decoder, encoder, queries): shaped by the phase CE only without the stop
    for prefix in ("decoder.", "encoder.", "queries"):
        assert _norm(on, prefix) == 0, prefix
        assert _norm(off, prefix) > 0, prefix


def test_load_balance_at_weight_zero_contributes_nothing():
    batch = _batch(MoEACTConfig.for_tests(STATE, ACTION))
    torch.manual_seed(1)
    off = _head().train().loss(batch)
    torch.manual_seed(1)
    on = _head(balance_weight=2.0).train().loss(batch)
    assert "load_balance" not in off.aux and "load_balance" in off.metrics  # logged, not trained
    torch.testing.assert_close(on.aux["load_balance"], 2.0 * on.metrics["load_balance"])
    torch.testing.assert_close(on.loss - off.loss, on.aux["load_balance"])
    # the entropy term maximizes the phase entropy: it enters the loss with a minus sign
    torch.testing.assert_close(off.aux["phase_entropy"], -0.1 * off.metrics["phase_entropy"])
    # Switch balance: 1 for uniform routing, K when everything goes to one expert
    valid = torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(load_balance(torch.full((2, 5, 4), 0.25), valid), torch.tensor(1.0))
    onehot = torch.zeros(2, 5, 4)
    onehot[..., 1] = 1
    torch.testing.assert_close(load_balance(onehot, valid), torch.tensor(4.0))


def test_gripper_bce_targets_the_normalized_sign_and_tracks_the_open_and_closed_levels():
    head = _head().train()
    cfg = head.config
    batch = _batch(cfg, 4)
    grip = torch.where(torch.rand(4, cfg.horizon) > 0.5, 1.5, -0.5)  # a binary gripper, normalized
    batch["action"][..., 2] = grip
    batch["action_is_pad"][0, 6:] = True
    grip[0, 6:] = 99.0  # padded: never counted
    batch["action"][0, 6:, 2] = 99.0
    head.loss(batch)
    torch.testing.assert_close(head.gripper_levels[:, 0], torch.tensor([-0.5, 1.5]))
    valid = ~batch["action_is_pad"]
    assert head.gripper_counts[:, 0].tolist() == [int(((grip < 0) & valid).sum()), int(((grip > 0) & valid).sum())]
    head.eval().loss(batch)  # validation losses leave the levels alone
    assert head.gripper_counts.sum() == valid.sum()


def test_padded_and_unlabelled_steps_carry_no_phase_loss_and_kernels_match_torch():
    head = _head()
    batch = _batch(head.config, 3)
    batch["action_is_pad"][1, 5:] = True
    batch["phase"][2, :3] = -1  # unlabelled frames
    results = []
    for on in (True, False):
        with kernels.override(on):
            torch.manual_seed(2)
            out = head.train().loss(batch)
            grads = torch.autograd.grad(out.loss, [p for p in head.parameters()], allow_unused=True)
        results.append((out, grads))
    (fast, fast_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fast.per_sample, plain.per_sample, rtol=1e-5, atol=1e-5)
    for g, r in zip(fast_grads, plain_grads):
        if g is not None and r is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert (fast.per_sample[1, 5:] == fast.per_sample[1, -1]).all()  # only the (per-sample) KL on padded steps
    assert not fast.valid[1, 5:].any()


def test_training_without_labels_is_refused_unless_the_phase_key_is_off():
    head = _head()
    batch = _batch(head.config)
    del batch["phase"]
    with pytest.raises(KeyError, match="no phase labels 'phase'.*phase_key=''"):
        head.train().loss(batch)
    free = _head(phase_key="")
    out = free.train().loss(batch)
    assert out.metrics["phase_accuracy"] == 0 and torch.isfinite(out.loss)


# ----- the phase labels as a dataset feature, through the sampler and the policy wrapper -------------------------
DS_FEATURES = {
    "observation.state": Feature("observation.state", "float32", (2,), "state"),
    "action": Feature("action", "float32", (3,), "action"),
    "phase": Feature("phase", "int64", (1,), "other", names=list(PHASES)),
}


def _write(root, episodes: int = 6, length: int = 24, tasks: tuple[str, ...] = ("lift the cube",)) -> None:
    """Scripted-looking episodes: the state carries the progress, phases split it in thirds, the position target
    depends on the phase and the gripper closes from the grasp on (raw -1 open / +1 closed)."""
    rng = np.random.default_rng(0)
    with create_writer(root, DS_FEATURES, fps=10, format="lerobot") as w:
        for episode in range(episodes):
            task = tasks[episode % len(tasks)]
            for t in range(length):
                progress = t / (length - 1)
                phase = min(int(3 * t / length), 2)
                target = [(0.0, 1.0), (1.0, 0.0), (0.5, -1.0)][phase]
                action = np.array([*target, 1.0 if phase else -1.0], np.float32) + 0.01 * rng.normal(size=3)
                w.add_frame({"observation.state": np.array([progress, rng.normal() * 0.1], np.float32),
                             "action": action.astype(np.float32), "phase": np.array([phase], np.int64)}, task=task)
            w.save_episode()


@pytest.fixture(scope="module")
def phase_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_act") / "ds"
    _write(root)
    return open_dataset(root)


def _policy(ds, input_keys=("observation.state",), **overrides) -> Policy:
    stats = compute_stats(ds, ["observation.state", "action"])
    torch.manual_seed(0)
    small = {**MoEACTConfig.test_overrides(), "horizon": 6, "n_action_steps": 6}  # K from the dataset's names
    return Policy.from_dataset(MoEACTConfig, ds, stats, input_keys=list(input_keys), **{**small, **overrides})


def test_phase_labels_flow_from_the_dataset_to_the_head_and_the_checkpoint_round_trips(tmp_path, phase_dataset):
    assert MoEACTConfig.phase_names(phase_dataset) == PHASES
    policy = _policy(phase_dataset).train()
    assert policy.config.num_phases == len(PHASES)  # recorded from the phase feature's names at creation
    windows = WindowSampler(phase_dataset, policy.config.delta_indices())
    raw = windows.get_batch([0, 10, 20, 23])
    prepared = policy.prepare(raw)
    assert prepared["phase"].dtype == torch.int64 and torch.equal(prepared["phase"], raw["phase"])  # unnormalized
    assert prepared["phase_is_pad"][3, 1:].all()  # the episode's end
    out = policy.loss(raw)
    out.loss.backward()
    assert torch.isfinite(out.loss)

    policy.eval()
    obs = {"observation.state": torch.tensor([[[0.1, 0.0]], [[0.9, 0.0]]])}
    chunk = policy.predict_chunk(obs)  # no labels at inference
    assert chunk.shape == (2, 6, 3)
    loaded = Policy.load(policy.save(tmp_path / "ckpt"))
    torch.testing.assert_close(loaded.predict_chunk(obs), chunk, rtol=0, atol=0)
    torch.testing.assert_close(loaded.head.gripper_levels, policy.head.gripper_levels)
    assert loaded.config.num_phases == 3 and loaded.config.phase_key == "phase"


def test_phase_report_counts_labelled_steps_and_expert_usage_per_true_phase(phase_dataset):
    policy = _policy(phase_dataset).train()
    windows = WindowSampler(phase_dataset, policy.config.delta_indices())
    batches = [windows.get_batch(list(range(i, min(i + 32, len(windows))))) for i in range(0, len(windows), 32)]
    report = phase_report(policy, batches, names=PHASES)
    assert policy.training  # the mode is restored
    steps = sum(int((~b["action_is_pad"]).sum()) for b in batches)
    assert report.confusion.shape == (3, 3) and int(report.confusion.sum()) == steps
    expected = torch.bincount(torch.cat([b["phase"][..., 0][~b["action_is_pad"]] for b in batches]), minlength=3)
    assert report.support.tolist() == expected.tolist()
    torch.testing.assert_close(report.usage.sum(1), torch.ones(3))
    assert 0.0 <= report.accuracy <= 1.0 and report.names == PHASES


def test_moe_act_conditions_on_an_instruction(tmp_path):
    root = tmp_path / "ds"
    _write(root, episodes=2, length=12, tasks=("lift the cube", "stack the cube"))
    policy = _policy(open_dataset(root), input_keys=("observation.state", TASK_KEY),
                     language=LanguageConfig(embed_dim=8)).train()
    windows = WindowSampler(open_dataset(root), policy.config.delta_indices())
    policy.loss(windows.get_batch(list(range(len(windows))))).loss.backward()
    assert policy.head.language_in.weight.grad.abs().sum() > 0
    policy.eval()
    obs = {"observation.state": torch.zeros(1, 1, 2)}
    a = policy.predict_chunk({**obs, TASK_KEY: "lift the cube"})
    b = policy.predict_chunk({**obs, TASK_KEY: "stack the cube"})
    assert not torch.allclose(a, b)


@pytest.mark.slow
def test_write_train_200_steps_then_the_phase_confusion_is_mostly_diagonal(tmp_path, phase_dataset):
    """A small end-to-end run: dataset with phase labels -> sampler -> 200 AdamW steps -> phase report."""
    policy = _policy(phase_dataset, entropy_weight=0.0).train()
    windows = WindowSampler(phase_dataset, policy.config.delta_indices())
    opt = torch.optim.AdamW([p for g in policy.head.parameter_groups() for p in g["params"]], lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = policy.loss(windows.get_batch(rng.integers(0, len(windows), 16).tolist()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    batches = [windows.get_batch(list(range(i, min(i + 32, len(windows))))) for i in range(0, len(windows), 32)]
    report = phase_report(policy, batches, names=PHASES)
    assert report.accuracy > 0.8, (report.accuracy, report.confusion)
    assert (report.confusion.diagonal() >= report.confusion.max(1).values).all(), report.confusion
