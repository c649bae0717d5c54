"""The same code on a CUDA device: training with EMA and bf16 plus exact resume, every head's chunk, real-time
chunking, and policy-server / process-worker round trips. Skipped without CUDA; `benchmarks/gpu_smoke.sh` runs
them on a GPU machine (`pytest -m gpu`)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer
from robopolicy.policies.policy import Policy
from robopolicy.runtime.async_inference import ProcessChunkSource, RemotePolicyClient
from robopolicy.runtime.executors import now_index
from robopolicy.runtime.policy_server import PolicyServer
from robopolicy.runtime.rtc import RTCConfig, rtc_sample
from robopolicy.train.config import load_config
from robopolicy.train.trainer import Trainer, train
from tests.policies.contract import HEADS, contract_policy
from tests.runtime.policy_fixtures import tiny_obs, tiny_policy
from tests.train.test_trainer import TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available()"
                                 " is False); run benchmarks/gpu_smoke.sh on a GPU machine")]
CUDA = torch.device("cuda")


def _raw_obs(policy: Policy, batch: int = 2) -> dict:
    """Raw CPU observations as a robot or the simulator gives them (images uint8)."""
    obs = policy.config.fake_obs(batch, torch.Generator().manual_seed(0))
    for key, spec in policy.config.input_features.items():
        if spec.kind == "image":
            obs[key] = (obs[key] * 255).to(torch.uint8)
    return obs


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


# ----- training ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_zarr(tmp_path_factory):
    """4 episodes x 50 frames of a 5-d state and 2-d action (a GPU machine need not hold ../shared/data)."""
    root = tmp_path_factory.mktemp("data") / "small.zarr"
    features = {"state": Feature("state", "float32", (5,), "state"),
                "action": Feature("action", "float32", (2,), "action")}
    rng = np.random.default_rng(0)
    writer = create_writer(root, features, 10, format="zarr")
    for _ in range(4):
        for _ in range(50):
            writer.add_frame({"state": rng.normal(size=5).astype(np.float32),
                              "action": rng.normal(size=2).astype(np.float32)})
        writer.save_episode()
    writer.finalize()
    return root


def test_training_with_ema_and_bf16_on_cuda_resumes(small_zarr, tmp_path):
    base = [*TINY, f"--data.uri={small_zarr}", "--train.steps=6", "--train.amp=bf16"]
    full = load_config(None, [*base, f"--train.output_dir={tmp_path / 'full'}", "--train.save_every=100"])
    trainer = Trainer(full)
    assert trainer.acc.device.type == "cuda" and trainer.acc.mixed_precision == "bf16"
    assert trainer.ema is not None and {t.device.type for t in trainer.ema.state_dict().values()} == {"cuda"}
    trainer.run()
    part = load_config(None, [*base, f"--train.output_dir={tmp_path / 'part'}", "--train.save_every=3"])
    train(part, stop_after=3)
    train(part, resume=True)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(b) == list(range(1, 7)) and all(np.isfinite(list(a.values())))
    for step in range(1, 7):  # cuDNN kernels need not be bit-deterministic: close, not equal
        assert a[step] == pytest.approx(b[step], rel=2e-2, abs=1e-3), f"step {step}: {a[step]} vs {b[step]}"
    policy = Policy.load(tmp_path / "part", map_location="cuda")
    assert policy.device.type == "cuda"
    obs = {k: torch.rand(1, policy.config.n_obs_steps, *f.shape) * 500 for k, f in policy.config.input_features.items()}
    chunk = policy.predict_chunk(obs)
    assert chunk.device.type == "cuda" and torch.isfinite(chunk).all()


# ----- every head ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_head_chunk_and_loss_on_cuda(name):
    cpu_policy = contract_policy(name)
    policy = contract_policy(name).to(CUDA)
    obs = _raw_obs(policy)
    chunk = policy.predict_chunk(obs)  # CPU observations: Policy.prepare moves them to the head's device
    assert chunk.device.type == "cuda" and chunk.shape == (2, policy.config.horizon, 2)
    assert torch.isfinite(chunk).all()
    many = policy.predict_chunk(obs, num_samples=3)
    assert many.device.type == "cuda" and many.shape == (2, 3, policy.config.horizon, 2)
    if name == "act":  # deterministic at inference: the GPU agrees with the CPU
        torch.testing.assert_close(chunk.cpu(), cpu_policy.predict_chunk(obs), rtol=1e-2, atol=1e-2)
    policy.train()
    batch = policy.config.fake_batch(2, torch.Generator().manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = policy.head.loss({k: v.to(CUDA) if torch.is_tensor(v) else v for k, v in batch.items()})
    out.loss.backward()
    grads = [p.grad for p in policy.head.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)


# ----- real-time chunking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flow", "diffusion"])
def test_rtc_on_cuda_follows_the_frozen_prefix(name):
    policy = tiny_policy(name).to(CUDA)
    obs = {"observation.state": torch.rand(2, policy.config.n_obs_steps, 5) * 512}
    now, delay = now_index(policy.config.action_delta_indices), 4
    prev = torch.linspace(100, 400, 12).view(1, 12, 1).expand(2, 12, 2).contiguous()  # unnormalized, on the CPU
    torch.manual_seed(1)
    guided = rtc_sample(policy, obs, prev, delay, RTCConfig(execution_horizon=8, schedule="exp"))
    plain = policy.predict_chunk(obs)
    assert guided.device.type == "cuda" and guided.shape == plain.shape and torch.isfinite(guided).all()
    err_g = (guided[:, now : now + delay].cpu() - prev[:, :delay]).abs().mean().item()
    err_u = (plain[:, now : now + delay].cpu() - prev[:, :delay]).abs().mean().item()
    assert err_u > 20.0 and err_g < 0.15 * err_u, (err_g, err_u)


# ----- serving -------------------------------------------------------------------------------------------------
def test_policy_server_round_trip_on_cuda(tmp_path):
    policy = tiny_policy("act")
    ckpt = policy.save(tmp_path / "ckpt")
    obs = tiny_obs(policy, batch=2)
    local = Policy.load(ckpt, map_location="cuda").predict_chunk(obs).cpu().numpy()
    server = PolicyServer.from_checkpoint(ckpt, device="cuda")
    assert server.service.policy.device.type == "cuda"
    with server, RemotePolicyClient(*server.address) as client:
        remote = client.predict_chunk(obs)
    assert remote.shape == local.shape
    np.testing.assert_allclose(remote, local, rtol=1e-5, atol=1e-4)


def test_policy_server_rtc_request_on_cuda(tmp_path):
    ckpt = tiny_policy("flow").save(tmp_path / "ckpt")
    policy = tiny_policy("flow")
    obs = tiny_obs(policy, batch=1)
    prev = np.linspace(100, 300, 10, dtype=np.float32).reshape(1, 10, 1).repeat(2, 2)
    with PolicyServer.from_checkpoint(ckpt, device="cuda") as server, RemotePolicyClient(*server.address) as client:
        chunk = client.predict_chunk(obs, prev_actions=prev, delay=3, rtc=RTCConfig(execution_horizon=6))
    assert chunk.shape == (1, policy.config.horizon, 2) and np.isfinite(chunk).all()


def test_policy_server_seeded_request_on_cuda(tmp_path):
    ckpt = tiny_policy("flow").save(tmp_path / "ckpt")
    obs = tiny_obs(tiny_policy("flow"), batch=1)
    with PolicyServer.from_checkpoint(ckpt, device="cuda") as server, RemotePolicyClient(*server.address) as client:
        np.testing.assert_array_equal(client.predict_chunk(obs, seed=3), client.predict_chunk(obs, seed=3))


@pytest.mark.timeout(300)
def test_process_worker_on_cuda(tmp_path):
    policy = tiny_policy("act")
    ckpt = policy.save(tmp_path / "ckpt")
    obs = tiny_obs(policy, batch=1)
    local = Policy.load(ckpt, map_location="cuda").predict_chunk(obs).cpu().numpy()
    with ProcessChunkSource(ckpt, device="cuda") as source:
        np.testing.assert_allclose(source.predict_chunk(obs, timeout=120), local, rtol=1e-5, atol=1e-4)
