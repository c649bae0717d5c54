"""Real-time chunking: soft mask and weight by hand, guidance sign on analytic (Gaussian) denoisers for both time
conventions, guided sampling with tiny real flow / diffusion policies, and the delayed-merge executor."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from robopolicy.policies.common.flow_matching import euler_integrate
from robopolicy.policies.diffusion.modeling import denoising_step as vp_step
from robopolicy.policies.flow.modeling import denoising_step as flow_step
from robopolicy.runtime.rtc import (
    RTCConfig,
    RTCExecutor,
    guidance_weight,
    make_guide,
    pigdm_guide,
    prefix_weights,
    rtc_sample,
)
from tests.runtime.policy_fixtures import ACTION_DIM as D
from tests.runtime.policy_fixtures import tiny_policy

H = 16


def test_prefix_weights_by_hand():
    lin = prefix_weights(2, 6, 8, "linear")
    torch.testing.assert_close(lin, torch.tensor([1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0], dtype=torch.float64))
    ex = prefix_weights(2, 6, 8, "exp")
    expected = [w * (math.exp(w) - 1) / (math.e - 1) for w in (1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0)]
    torch.testing.assert_close(ex, torch.tensor(expected, dtype=torch.float64))
    assert prefix_weights(2, 6, 8, "ones").tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert prefix_weights(2, 6, 8, "zeros").tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert prefix_weights(9, 4, 6, "linear").tolist() == [1, 1, 1, 1, 0, 0]  # delay capped at end
    with pytest.raises(ValueError, match="schedule"):
        prefix_weights(1, 2, 3, "cosine")


def test_guidance_weight_by_hand():
    assert guidance_weight(0.5, 10) == pytest.approx(2.0)  # (0.25 + 0.25) / 0.25
    assert guidance_weight(0.9, 10) == pytest.approx((0.81 + 0.01) / 0.09)
    assert guidance_weight(0.95, 10) == 10.0  # 19.05 clipped at beta
    assert guidance_weight(0.0, 10) == 10.0 and guidance_weight(1.0, 3) == 3.0


def gaussian_velocity(x, t):
    """Exact flow velocity for data A ~ N(0, I) in robopolicy's convention (t = 1 noise -> 0 data)."""
    tt = t.view(-1, 1, 1)
    mean = (1 - tt) * x / ((1 - tt) ** 2 + tt**2)  # E[A | x_t]
    return (x - mean) / tt


def prefix_target(batch=4):
    y = torch.linspace(-0.8, 0.8, H).view(1, H, 1).expand(batch, H, D).contiguous()
    return y


@pytest.mark.parametrize("schedule", ["zeros", "ones"])
def test_flow_guidance_sign_and_reproduction_analytic(schedule):
    y = prefix_target()
    w = prefix_weights(5, H, H, schedule).float().view(1, H, 1)
    errors = []
    for beta in (0.0, 1.0, 10.0):
        noise = torch.randn(4, H, D, generator=torch.Generator().manual_seed(0))
        guide = pigdm_guide(y, w, beta)
        out = euler_integrate(
            lambda x, t, g=guide: g(lambda x_: gaussian_velocity(x_, t), x, flow_step(float(t[0]))), noise, 10)
        errors.append((out - y)[:, :5].abs().mean().item())
    assert errors[0] > 0.5  # unguided: an independent sample
    assert errors[1] < 0.6 * errors[0]  # the right sign: guidance pulls the prefix toward the frozen actions
    assert errors[2] < 1e-3  # beta = 10 with 10 Euler steps reproduces the prefix


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddim_guidance_sign_and_reproduction_analytic(prediction_type):
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                          prediction_type=prediction_type)
    y = prefix_target()
    w = prefix_weights(5, H, H, "zeros").float().view(1, H, 1)
    errors = []
    for beta in (0.0, 1.0, 10.0):
        x = torch.randn(4, H, D, generator=torch.Generator().manual_seed(0))
        sched.set_timesteps(10)
        guide = pigdm_guide(y, w, beta)
        for t in sched.timesteps:
            abar = float(sched.alphas_cumprod[int(t)])
            # exact denoiser for A ~ N(0, I): E[eps | x] = sqrt(1 - abar) x, E[A | x] = sqrt(abar) x
            scale = math.sqrt(1 - abar) if prediction_type == "epsilon" else math.sqrt(abar)
            exact = lambda x_, scale=scale: scale * x_  # noqa: E731
            x = sched.step(guide(exact, x, vp_step(abar, prediction_type, None)), t, x).prev_sample
        errors.append((x - y)[:, :5].abs().mean().item())
    assert errors[0] > 0.5
    assert errors[1] < 0.6 * errors[0]
    assert errors[2] < 0.05


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["flow", "diffusion"])
def test_guided_sample_with_a_real_head_follows_the_prefix(name):
    policy = tiny_policy(name)
    obs = {"observation.state": torch.rand(2, policy.config.n_obs_steps, 5) * 512}
    now = 1  # T_o = 2: chunk index 1 is the observation step
    prev = torch.linspace(100, 400, 12).view(1, 12, 1).expand(2, 12, D).contiguous()  # unnormalized
    delay = 4
    cfg = RTCConfig(execution_horizon=8, schedule="exp")
    guided = rtc_sample(policy, obs, prev, delay, cfg, generator=torch.Generator().manual_seed(1))
    plain = policy.predict_chunk(obs, torch.Generator().manual_seed(1))
    assert guided.shape == plain.shape == (2, H, D)
    err_g = (guided[:, now : now + delay] - prev[:, :delay]).abs().mean().item()
    err_u = (plain[:, now : now + delay] - prev[:, :delay]).abs().mean().item()
    assert err_u > 20.0 and err_g < 0.15 * err_u, (err_g, err_u)
    # no prefix -> exactly the unguided sample
    torch.testing.assert_close(rtc_sample(policy, obs, None, delay, cfg, torch.Generator().manual_seed(1)), plain)


def test_make_guide_rejects_heads_without_a_sampler_and_bad_prefix():
    offers = r"ACTHead offers \['differentiable_sampling', 'language'\]: use a receding-horizon"
    with pytest.raises(TypeError, match=offers):
        make_guide(tiny_policy("act"), torch.zeros(1, 3, 2), 1, RTCConfig())
    policy = tiny_policy("flow")
    with pytest.raises(ValueError, match=r"prev_actions must be \(B, R, 2\)"):
        make_guide(policy, torch.zeros(1, 3, 5), 1, RTCConfig())
    with pytest.raises(ValueError, match="schedule"):
        RTCConfig(schedule="cosine")


def tagged(query: int, horizon: int = 12) -> torch.Tensor:
    """chunk[0, j, 0] = 100 * query + j."""
    return (100 * query + torch.arange(horizon, dtype=torch.float64)).view(1, horizon, 1)


def test_rtc_executor_merges_late_chunks_at_the_right_index():
    """now = 1, delay = 2, replan every 4 steps: a chunk pushed at step t takes over at t + 2 with index now + 2."""
    ex = RTCExecutor(delay=2, replan_every=4, now=1, horizon=12)
    executed, pushes, prefixes = [], [], {}
    for t in range(14):
        if ex.needs_chunk():
            pushes.append(t)
            prefixes[t] = ex.prefix()
            ex.push(tagged(t))
        executed.append(int(ex.pop()[0, 0]))
    assert pushes == [0, 4, 8, 12]
    # step 0: nothing queued, so chunk 0 lands at once from index now = 1; chunk 4 lands at step 6 at index
    # now + 2 = 3, chunk 8 at step 10 at index 3, ...
    assert executed == [1, 2, 3, 4, 5, 6, 403, 404, 405, 406, 803, 804, 805, 806]
    assert prefixes[0] is None
    # the prefix handed to rtc_sample at step 4: chunk 0's actions for steps 4.. (indices 5..11)
    assert prefixes[4][0, :, 0].tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert ex.describe()["type"] == "rtc"


def test_rtc_executor_validates():
    with pytest.raises(ValueError, match="run dry"):
        RTCExecutor(delay=5, replan_every=8, now=1, horizon=12)
    ex = RTCExecutor(delay=1, replan_every=2)
    with pytest.raises(RuntimeError, match="push a chunk"):
        ex.pop()
