"""Mechanism tests of algorithms.md section 9 for the RL building blocks: critics, chunk targets, Cal-QL, IQL,
PA-RL's action optimisation and PTR's weights."""

from __future__ import annotations

import math

import pytest
import torch

from robopolicy.config_parsing import ConfigError
from robopolicy.rl.action_optimization import (
    ActionOptimizationConfig,
    choose,
    global_step,
    local_step,
    optimize_actions,
)
from robopolicy.rl.critics import CriticConfig, EnsembleQ, ValueNet, two_hot
from robopolicy.rl.objectives import cal_ql_regularizer, chunk_targets, expectile_loss
from robopolicy.rl.ptr_weights import identification_logits, kl_bound, posterior_weights

# ----- critics ---------------------------------------------------------------------------------------------------


def test_ensemble_members_differ_and_match_a_per_member_mlp():
    torch.manual_seed(0)
    q = EnsembleQ(5, 6, CriticConfig(ensemble_size=4, hidden_dims=(16, 16)))
    obs, act = torch.randn(7, 5), torch.randn(7, 2, 3)
    out = q.q(obs, act)
    assert out.shape == (4, 7)
    assert (out[0] - out[1]).abs().max() > 1e-3  # independent initialisation
    # member 2 by hand: linear, per-member LayerNorm, ReLU, ..., linear
    x = torch.cat([obs, act.flatten(1)], -1)
    for layer, norm in zip(q.net.layers, q.net.norms):
        x = x @ layer.weight[2] + layer.bias[2, 0]
        x = torch.relu(torch.nn.functional.layer_norm(x, x.shape[-1:]) * norm.weight[2, 0] + norm.bias[2, 0])
    torch.testing.assert_close(out[2], (x @ q.net.out.weight[2] + q.net.out.bias[2, 0]).squeeze(-1))


def test_target_is_the_min_of_a_random_subset_and_polyak_moves_it():
    torch.manual_seed(0)
    q = EnsembleQ(3, 2, CriticConfig(ensemble_size=10, subsample=2, hidden_dims=(8,), tau=0.5))
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    with torch.no_grad():
        all_q = q.values(q.target_net(torch.cat([obs, act], -1)))
    g = torch.Generator().manual_seed(3)
    members = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:2]
    torch.testing.assert_close(q.target(obs, act, generator=g), all_q[members].min(0).values)
    before = [p.clone() for p in q.target_net.parameters()]
    with torch.no_grad():
        for p in q.net.parameters():
            p.add_(1.0)
    q.update_target()
    for b, tp, p in zip(before, q.target_net.parameters(), q.net.parameters()):
        torch.testing.assert_close(tp, 0.5 * b + 0.5 * p)
    assert not any(p.requires_grad for p in q.target_net.parameters())


def test_two_hot_is_exact_and_a_distributional_critic_learns_a_target():
    atoms = torch.linspace(-100, 0, 128)
    y = torch.tensor([-100.0, -37.3, 0.0, 5.0, -150.0])
    p = two_hot(y, atoms)
    torch.testing.assert_close(p.sum(-1), torch.ones(5))
    torch.testing.assert_close(p @ atoms, y.clamp(-100, 0))
    assert ((p > 0).sum(-1) <= 2).all()

    torch.manual_seed(0)
    q = EnsembleQ(2, 1, CriticConfig(ensemble_size=2, hidden_dims=(32,), num_bins=128))
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    obs, act = torch.randn(64, 2), torch.randn(64, 1)
    target = -50.0 + 20.0 * obs[:, 0]
    for _ in range(300):
        opt.zero_grad()
        q.td_loss(q(obs, act), target).mean().backward()
        opt.step()
    assert (q.q(obs, act) - target).abs().mean() < 3.0


def test_critic_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="subsample"):
        CriticConfig(ensemble_size=2, subsample=3)
    with pytest.raises(ConfigError, match="q_max"):
        CriticConfig(q_min=0.0, q_max=-1.0)


# ----- chunk targets (CO-RFT, and one-step TD as h = 1) ------------------------------------------------------------


def test_chunk_targets_on_a_hand_computed_trajectory():
    g = 0.5
    # sample 0: 3 steps, all inside the episode; sample 1: terminal at step 1; sample 2: the episode ends after
    # step 1 without a terminal (no observation after it)
    reward = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    terminal = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    exists = torch.tensor([[True, True, True, True], [True, True, False, False], [True, True, False, False]])
    boot = torch.tensor([[10.0, 20.0, 40.0], [10.0, 20.0, 40.0], [10.0, 20.0, 40.0]])
    y, defined = chunk_targets(reward, terminal, exists, boot, g)
    expected = torch.tensor([
        [1 + g * 10, 1 + g * 2 + g**2 * 20, 1 + g * 2 + g**2 * 4 + g**3 * 40],
        [1 + g * 10, 1 + g * 2, 1 + g * 2],  # nothing after the terminal step counts
        [1 + g * 10, 0.0, 0.0],  # (undefined entries are not checked)
    ])
    torch.testing.assert_close(y[:2], expected[:2])
    assert y[2, 0] == expected[2, 0]
    assert defined.tolist() == [[True, True, True], [True, True, True], [True, False, False]]


def test_one_step_td_is_chunk_targets_with_h_1():
    y, defined = chunk_targets(torch.tensor([[1.0], [1.0]]), torch.tensor([[False], [True]]),
                               torch.tensor([[True, True], [True, False]]), torch.tensor([[3.0], [3.0]]), 0.9)
    torch.testing.assert_close(y, torch.tensor([[1 + 0.9 * 3], [1.0]]))
    assert defined.all()


# ----- Cal-QL and IQL --------------------------------------------------------------------------------------------


def test_cal_ql_calibrates_policy_values_to_the_monte_carlo_return():
    q_policy = torch.tensor([[[-5.0, -1.0], [-9.0, -8.0]]])  # (E=1, B=2, N=2)
    q_data = torch.tensor([[-2.0, -3.0]])
    v_mu = torch.tensor([-3.0, -4.0])
    # max(Q, V): [-3, -1] and [-4, -4]
    torch.testing.assert_close(cal_ql_regularizer(q_policy, q_data, v_mu),
                               torch.tensor([[-2.0 + 2.0, -4.0 + 3.0]]))
    lse = cal_ql_regularizer(q_policy, q_data, v_mu, reduce="logsumexp")
    expected = torch.logsumexp(torch.tensor([-3.0, -1.0]), 0) - math.log(2) + 2.0
    torch.testing.assert_close(lse[0, 0], expected)


def test_expectile_loss_weights_and_iql_value_converges_to_the_expectile():
    diff = torch.tensor([-2.0, 2.0])
    torch.testing.assert_close(expectile_loss(diff, 0.7), torch.tensor([0.3 * 4, 0.7 * 4]))
    torch.manual_seed(0)
    v = ValueNet(1, (16,))
    opt = torch.optim.Adam(v.parameters(), lr=3e-2)
    obs = torch.zeros(512, 1)
    q = torch.randn(512)
    for step in range(600):
        for group in opt.param_groups:
            group["lr"] = 3e-2 if step < 400 else 3e-3
        opt.zero_grad()
        expectile_loss(q - v(obs), 0.7).mean().backward()
        opt.step()
    # the sample's 0.7-expectile m solves sum |0.7 - 1(q < m)| (q - m) = 0 (for N(0, 1) about 0.31)
    lo, hi = -3.0, 3.0
    for _ in range(60):
        m = (lo + hi) / 2
        lo, hi = (m, hi) if float((torch.where(q < m, 0.3, 0.7) * (q - m)).sum()) > 0 else (lo, m)
    assert float(v(obs[:1]).detach()) == pytest.approx(m, abs=0.02)
    assert float(q.mean()) < m < float(q.quantile(0.7))


# ----- PA-RL action optimisation ---------------------------------------------------------------------------------


def test_a_linear_q_moves_actions_by_t_eta_grad_q():
    """algorithms.md section 9: with Q(s, a) = w . a, T steps of size eta move every action by T * eta * w."""
    w = torch.tensor([0.5, -1.0, 2.0])

    def q_fn(obs, a):
        return (a * w).sum(dim=(-1, -2))

    actions = torch.zeros(2, 4, 1, 3)
    out, q = local_step(q_fn, torch.zeros(2, 1), actions, steps=10, step_size=3e-4)
    torch.testing.assert_close(out, actions + 10 * 3e-4 * w)
    torch.testing.assert_close(q, torch.full((2, 4), float(10 * 3e-4 * w.pow(2).sum())))


def test_local_steps_clip_and_keep_the_best_iterate():
    def q_fn(obs, a):  # maximum at a = 0.5 per dim
        return -(a - 0.5).pow(2).sum(dim=(-1, -2))

    start = torch.full((1, 1, 1, 2), 0.9)
    out, q = local_step(q_fn, torch.zeros(1, 1), start, steps=5, step_size=10.0)  # huge steps overshoot
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert float(q) >= float(q_fn(None, start[0]))  # never worse than the start


def test_global_step_keeps_the_top_k_and_optimize_chains_both():
    def q_fn(obs, a):
        return a.sum(dim=(-1, -2))

    cands = torch.tensor([0.1, -0.5, 0.7, 0.3]).view(1, 4, 1, 1)
    top, q = global_step(q_fn, torch.zeros(1, 1), cands, 2)
    assert top.flatten().tolist() == pytest.approx([0.7, 0.3]) and q.flatten().tolist() == pytest.approx([0.7, 0.3])
    cfg = ActionOptimizationConfig(num_samples=4, top_k=2, steps=3, step_size=0.1)
    out, q = optimize_actions(q_fn, torch.zeros(1, 1), cands, cfg)
    assert out.flatten().tolist() == pytest.approx([1.0, 0.6])  # 0.7 + 0.3 clipped at 1, 0.3 + 0.3
    assert choose(out, q, "argmax").flatten().tolist() == pytest.approx([1.0])
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([choose(out, q, "softmax", temperature=0.2, generator=g) for _ in range(400)]).flatten()
    share = float((picks == 1.0).float().mean())
    assert share == pytest.approx(1 / (1 + math.exp(-0.4 / 0.2)), abs=0.06)  # softmax(Q / T) over the two


# ----- PTR weights -----------------------------------------------------------------------------------------------


def test_a_uniform_posterior_gives_weights_exactly_one():
    logits = torch.full((6, 9), 3.7)
    w, score = posterior_weights(logits)
    assert torch.equal(w, torch.ones(6))
    torch.testing.assert_close(score, torch.zeros(6), atol=1e-6, rtol=0)


def test_weights_are_bounded_and_the_kl_bound_holds():
    torch.manual_seed(0)
    query, cands = torch.randn(256, 8), torch.randn(256, 17, 8)
    cands[:128, 0] = query[:128]  # half the samples identify their own future, half do not
    w, _score = posterior_weights(identification_logits(query, cands, tau=0.12))
    assert w.min() >= 0.25 and w.max() <= 4.0
    assert w[:128].mean() > 2.0 and w[128:].mean() < 1.0
    q = w / w.sum()  # the reweighted empirical distribution against the uniform p_D
    kl = float((q * torch.log(q * len(w))).sum())
    assert 0.0 < kl <= kl_bound(0.25, 4.0) == pytest.approx(math.log(16))


def test_samples_without_a_future_get_weight_one_and_pools_can_differ_in_size():
    logits = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, -1e4]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    w, score = posterior_weights(logits, valid, has_future=torch.tensor([True, False]))
    assert w[1] == 1.0 and score[1] == 0.0
    p0 = math.exp(5) / (math.exp(5) + 2)
    assert float(score[0]) == pytest.approx(math.log(p0) + math.log(3), rel=1e-5)
    assert float(w[0]) == pytest.approx(min(4.0, math.exp(float(score[0]) / 1.5)), rel=1e-5)


# ----- the chunked critic (CO-RFT) ---------------------------------------------------------------------------------


def test_chunked_critic_prefix_values_see_only_their_prefix():
    from robopolicy.rl.chunked_critic import ChunkedCritic, ChunkedCriticConfig

    torch.manual_seed(0)
    critic = ChunkedCritic(3, 2, 5, ChunkedCriticConfig(ensemble_size=2, dim=16, n_heads=2, dim_feedforward=32))
    obs, actions = torch.randn(4, 3), torch.randn(4, 5, 2)
    q = critic(obs, actions)
    assert q.shape == (2, 4, 5)
    changed = actions.clone()
    changed[:, 3] += 1.0  # the 4th action: Q_1..Q_3 must not move, Q_4 and Q_5 must
    q2 = critic(obs, changed)
    torch.testing.assert_close(q2[:, :, :3], q[:, :, :3])
    assert (q2[:, :, 3:] - q[:, :, 3:]).abs().min() > 0
    torch.testing.assert_close(critic.target_full(obs, actions), q[:, :, -1].min(0).values)  # targets start equal


def test_chunked_critic_fits_prefix_targets():
    """Trained on chunk_targets of a hand-made reward, every prefix value converges to its own target."""
    from robopolicy.rl.chunked_critic import ChunkedCritic, ChunkedCriticConfig

    torch.manual_seed(0)
    critic = ChunkedCritic(2, 1, 4, ChunkedCriticConfig(ensemble_size=1, dim=32, n_heads=2, dim_feedforward=64))
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    obs, actions = torch.randn(64, 2), torch.randn(64, 4, 1)
    reward = -actions.squeeze(-1).abs()  # (B, 4)
    y, defined = chunk_targets(reward, torch.zeros(64, 4, dtype=torch.bool), torch.ones(64, 5, dtype=torch.bool),
                               torch.zeros(64, 4), 0.9)
    assert defined.all()
    for _ in range(400):
        opt.zero_grad()
        (critic(obs, actions)[0] - y).pow(2).mean().backward()
        opt.step()
    err = (critic(obs, actions)[0] - y).abs().mean(0)
    assert (err < 0.1).all(), err
