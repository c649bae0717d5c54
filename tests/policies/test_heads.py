"""Contract tests parametrized over every registered head, plus the flow-matching math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tests.plugin_heads.configuration  # noqa: F401  (registers a head from outside robopolicy)
from robopolicy.data.normalize import StatsMismatchError
from robopolicy.policies.base import DIFFERENTIABLE_SAMPLING, FeatureSpec
from robopolicy.policies.common.flow_matching import euler_integrate, interpolate, sample_time
from robopolicy.policies.policy import Policy, make_normalizer
from robopolicy.policies.registry import available_policies, config_from_dict, config_to_dict, get_config_class
from tests.policies.contract import contract_policy

HEADS = available_policies()
FEATURES = {"observation.state": FeatureSpec((5,), "state"), "observation.image": FeatureSpec((3, 32, 32), "image")}
ACTION = {"action": FeatureSpec((2,), "action")}
IMAGE_HEADS = [h for h in HEADS if h != "mlp_flow_plugin"]  # the plugin head is state-only


def _config(name, features=FEATURES, **extra):
    from robopolicy.policies.registry import from_plain

    cls = get_config_class(name)
    typed = from_plain(cls, extra)
    return cls.for_tests(features, ACTION, **{k: getattr(typed, k) for k in extra})


def _features(name):
    return FEATURES if name in IMAGE_HEADS else {"observation.state": FEATURES["observation.state"]}


def test_builtin_and_plugin_heads_are_registered():
    assert {"diffusion", "flow", "act", "mlp_flow_plugin"} <= set(HEADS)


def _stats():
    return {
        "observation.state": {"min": np.zeros(5), "max": np.full(5, 512.0), "mean": np.full(5, 256.0),
                              "std": np.full(5, 100.0)},
        "action": {"min": np.zeros(2), "max": np.full(2, 512.0), "mean": np.full(2, 256.0), "std": np.full(2, 100.0)},
    }


@pytest.mark.parametrize("name", HEADS)
def test_loss_and_sample_shapes(name):
    cfg = _config(name, _features(name))
    policy = Policy(cfg, make_normalizer(cfg, _stats()))
    batch = cfg.fake_batch(3, torch.Generator().manual_seed(0))
    out = policy.head.loss(batch)
    assert out.per_sample.shape[0] == 3 and out.per_sample.dim() in (1, 2)
    assert torch.isfinite(out.per_sample).all()
    out.loss.backward()
    chunk = policy.head.sample(cfg.fake_obs(3), generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, cfg.horizon, 2)


@pytest.mark.parametrize("name", HEADS)
def test_checkpoint_round_trip_gives_identical_chunks(name, tmp_path):
    cfg = _config(name, _features(name))
    policy = Policy(cfg, make_normalizer(cfg, _stats())).eval()
    obs = {"observation.state": torch.rand(2, cfg.n_obs_steps, 5) * 512,
           "observation.image": torch.randint(0, 256, (2, cfg.n_obs_steps, 3, 32, 32), dtype=torch.uint8)}
    obs = {k: v for k, v in obs.items() if k in cfg.input_features}
    a = policy.predict_chunk(obs, torch.Generator().manual_seed(1))
    policy.save(tmp_path / "ckpt")
    b = Policy.load(tmp_path / "ckpt").predict_chunk(obs, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", HEADS)
def test_overfits_a_single_batch(name):
    torch.manual_seed(0)
    cfg = _config(name, features={"observation.state": FEATURES["observation.state"]})
    policy = Policy(cfg, make_normalizer(cfg, _stats()))
    batch = cfg.fake_batch(8, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(policy.head.parameters(), lr=1e-3)
    losses = []
    for _ in range(80):
        loss = policy.head.loss(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # means over steps: denoising losses draw fresh noise and times every step
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, (losses[:5], losses[-10:])


def test_missing_observation_key_is_named():
    cfg = _config(HEADS[0])
    policy = Policy(cfg, make_normalizer(cfg, _stats()))
    with pytest.raises(KeyError, match="observation lacks \\['observation.image'\\]"):
        policy.predict_chunk({"observation.state": torch.zeros(1, cfg.n_obs_steps, 5)})


def test_checkpoint_with_mismatched_stats_is_refused(tmp_path):
    cfg = _config(HEADS[0])
    policy = Policy(cfg, make_normalizer(cfg, _stats()))
    policy.save(tmp_path)
    stats = (tmp_path / "stats.json").read_text().replace('"observation.state"', '"observation.other"')
    (tmp_path / "stats.json").write_text(stats)
    with pytest.raises(StatsMismatchError, match="no stats for feature 'observation.state'"):
        Policy.load(tmp_path)


def test_flow_time_distribution_and_integration_direction():
    t = sample_time(200_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # density ∝ sqrt(t): P(t > 0.5) = 1 - 0.5**1.5 ≈ 0.646 (concentrated at the noisy end)
    assert abs((t > 0.5).float().mean().item() - (1 - 0.5**1.5)) < 0.01
    actions, noise = torch.randn(4, 16, 2), torch.randn(4, 16, 2)
    x_t, _u = interpolate(actions, noise, torch.full((4,), 1.0))
    torch.testing.assert_close(x_t, noise)
    # with the exact velocity, Euler integration from noise (t=1) lands on the data (t=0)
    out = euler_integrate(lambda x, tt: noise - actions, noise, steps=10)
    torch.testing.assert_close(out, actions)


@pytest.mark.parametrize("name", ["diffusion", "flow"])
def test_transformer_backbone(name):
    tiny = {"backbone": "transformer", "transformer": {"n_layer": 2, "n_head": 2, "n_emb": 32}}
    cfg = _config(name, features={"observation.state": FEATURES["observation.state"]}, denoiser=tiny)
    policy = Policy(cfg, make_normalizer(cfg, _stats()))
    out = policy.head.loss(cfg.fake_batch(3, torch.Generator().manual_seed(0)))
    assert out.per_sample.shape == (3, cfg.horizon) and torch.isfinite(out.per_sample).all()
    chunk = policy.head.sample(cfg.fake_obs(2), generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, cfg.horizon, 2)


@pytest.mark.parametrize("name", ["diffusion", "flow"])
def test_level2_minibatching_keeps_per_sample_shape_and_masks_pads(name):
    cfg = _config(name, features={"observation.state": FEATURES["observation.state"]}, minibatch_k=3, mask_padding=True)
    policy = Policy(cfg, make_normalizer(cfg, _stats()))
    batch = cfg.fake_batch(4, torch.Generator().manual_seed(0))
    batch["action_is_pad"][:, -5:] = True
    out = policy.head.loss(batch)
    assert out.per_sample.shape == (4, cfg.horizon)
    assert (out.per_sample[:, -5:] == 0).all() and (out.per_sample[:, :-5] > 0).all()


@pytest.mark.parametrize("name", HEADS)
def test_num_samples_encodes_each_observation_once_and_groups_by_observation(name):
    cfg = _config(name, _features(name))
    head = Policy(cfg, make_normalizer(cfg, _stats())).eval().head
    obs = cfg.fake_obs(2, torch.Generator().manual_seed(0))
    calls = []
    encode = head.encode
    head.encode = lambda o: (calls.append(next(iter(o.values())).shape[0]), encode(o))[1]
    out = head.sample(obs, num_samples=4, generator=torch.Generator().manual_seed(3))
    assert out.shape == (2, 4, cfg.horizon, 2) and calls == [2]  # B observations encoded once, not B * N
    # row (b, j) is draw j for observation b: the same as sampling the observation repeated 4 times
    repeated = {k: v.repeat_interleave(4, 0) for k, v in obs.items()}
    flat = head.sample(repeated, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.flatten(0, 1), flat, atol=1e-5, rtol=1e-5)
    assert head.sample(obs).shape == (2, cfg.horizon, 2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        head.sample(obs, num_samples=0)


@pytest.mark.parametrize("name", HEADS)
def test_loss_output_carries_valid_mask_aux_and_tensor_metrics(name):
    cfg = _config(name, _features(name))
    head = Policy(cfg, make_normalizer(cfg, _stats())).head
    batch = cfg.fake_batch(3, torch.Generator().manual_seed(0))
    batch["action_is_pad"][:, -2:] = True
    out = head.loss(batch)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in out.log_values().values())
    torch.testing.assert_close(out.weighted(torch.ones(3)), out.loss)
    w = torch.tensor([1.0, 0.0, 2.0])
    per = out.sample_losses()
    torch.testing.assert_close(out.weighted(w), (w * per).mean() + sum(out.aux.values(), torch.tensor(0.0)))
    if out.valid is not None:
        assert out.valid.shape == out.per_sample.shape and not out.valid[:, -2:].any() and out.valid[:, :-2].all()


def test_heads_without_guidance_refuse_a_guide():
    cfg = _config("act", _features("act"))
    head = Policy(cfg, make_normalizer(cfg, _stats())).eval().head
    assert not head.supports("guidance")
    with pytest.raises(TypeError, match="does not offer guided sampling"):
        head.sample(cfg.fake_obs(1), guide=lambda denoise, x, step: denoise(x))


@pytest.mark.parametrize("name", HEADS)
def test_predict_chunk_follows_the_policy_dtype_and_encode_trains_a_critic(name):
    cfg = _config(name, _features(name))
    policy = Policy(cfg, make_normalizer(cfg, _stats())).to(torch.float64).eval()
    obs = {"observation.state": torch.rand(2, cfg.n_obs_steps, 5) * 512,
           "observation.image": torch.randint(0, 256, (2, cfg.n_obs_steps, 3, 32, 32), dtype=torch.uint8)}
    obs = {k: v for k, v in obs.items() if k in cfg.input_features}
    chunk = policy.predict_chunk(obs, torch.Generator().manual_seed(0), num_samples=2)
    assert chunk.dtype == torch.float64 and chunk.shape == (2, 2, cfg.horizon, 2)
    # a critic on the policy's own observation encoding: gradients reach the head's encoder
    policy = Policy(cfg, make_normalizer(cfg, _stats())).train()
    feats = policy.head.encode(policy.prepare(obs))
    critic = torch.nn.Linear(feats[0].numel(), 1)
    critic(feats.flatten(1)).sum().backward()
    assert feats.shape[0] == 2
    if name in IMAGE_HEADS:  # (the plugin's state-only encoding has no parameters)
        grads = [p.grad for p in policy.head.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", HEADS)
def test_differentiable_sampling_is_declared_and_carries_gradients(name):
    """Heads with DIFFERENTIABLE_SAMPLING give chunks with gradients through the Policy wrapper (what CO-RFT's
    actor uses); `sample` never does; a head without the capability refuses."""
    policy = contract_policy(name).train()
    batch = {k: v for k, v in policy.config.fake_batch(3, torch.Generator().manual_seed(0)).items()}
    obs = {k: v for k, v in batch.items() if k in policy.config.input_features or k.endswith("_is_pad")}
    assert not policy.head.sample(policy.config.fake_obs(3)).requires_grad
    if not policy.head.supports(DIFFERENTIABLE_SAMPLING):
        with pytest.raises(TypeError, match="differentiable"):
            policy(obs, sample=True)
        return
    raw = {k: policy.normalizer.unnormalize(k, v) if k in policy.config.input_features and
           policy.config.input_features[k].kind == "state" else v for k, v in obs.items()}
    chunk = policy(raw, sample=True, generator=torch.Generator().manual_seed(1))
    assert chunk.shape == (3, policy.config.horizon, policy.config.action_dim) and chunk.requires_grad
    chunk.square().sum().backward()
    grads = [p.grad for p in policy.head.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
