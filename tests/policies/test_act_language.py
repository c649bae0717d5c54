"""ACT conditions on an instruction through one extra encoder token: a learned task embedding or a (tiny, random,
written by the test) transformers text encoder; the words change the chunk and the checkpoint round-trips."""

from __future__ import annotations

import shutil

import pytest
import torch

from robopolicy.data.stats import compute_stats
from robopolicy.policies.base import LANGUAGE
from robopolicy.policies.common import kernels
from robopolicy.policies.common.text_encoder import LanguageConfig
from robopolicy.policies.policy import TASK_KEY, Policy
from robopolicy.policies.registry import get_config_class
from tests.policies.conftest import LANGUAGE_FEATURES, LANGUAGE_TASKS
from tests.text_models import write_tiny_text_model

FEATURES, TASKS = LANGUAGE_FEATURES, LANGUAGE_TASKS


@pytest.fixture(scope="module")
def dataset(two_task_dataset):
    return two_task_dataset


def _policy(ds, language: LanguageConfig) -> Policy:
    cls = get_config_class("act")
    stats = compute_stats(ds, ["observation.state", "action"])
    torch.manual_seed(0)
    return Policy.from_dataset(cls, ds, stats, input_keys=["observation.state", TASK_KEY],
                               **{**cls.test_overrides(), "horizon": 4, "n_action_steps": 4, "language": language})


def _chunk(policy: Policy, task: str) -> torch.Tensor:
    return policy.predict_chunk({"observation.state": torch.zeros(1, 1, 3), TASK_KEY: task})


def _batch(task_list):
    b = len(task_list)
    return {"observation.state": torch.randn(b, 1, 3), "observation.state_is_pad": torch.zeros(b, 1, dtype=bool),
            "action": torch.randn(b, 4, 2), "action_is_pad": torch.zeros(b, 4, dtype=bool), TASK_KEY: task_list}


@pytest.mark.parametrize("encoder", ["learned", "bert"])
def test_the_instruction_is_an_encoder_token_that_changes_the_chunk_and_round_trips(tmp_path, dataset, encoder):
    model_dir = write_tiny_text_model(tmp_path / "bert", "bert") if encoder == "bert" else None
    language = LanguageConfig(embed_dim=8) if model_dir is None else LanguageConfig(encoder=str(model_dir), embed_dim=8)
    policy = _policy(dataset, language).train()
    head = policy.head
    assert head.supports(LANGUAGE)
    assert head.state_in.in_features == 3  # the instruction is not part of the state vector
    if encoder == "learned":
        assert policy.config.language.tasks == tuple(TASKS)
    prepared = policy.prepare({"observation.state": torch.zeros(2, 1, 3), TASK_KEY: TASKS})
    z = torch.zeros(2, policy.config.latent_dim)
    assert head._tokens(prepared, z).shape == (2, 3, policy.config.dim_model)  # [latent, state, instruction]

    out = policy.loss(_batch([TASKS[0], TASKS[1], TASKS[0]]))
    out.loss.backward()
    assert head.language_in.weight.grad.abs().sum() > 0 and head.language_pos.grad.abs().sum() > 0
    if encoder == "learned":
        assert head.language.table.weight.grad.abs().sum() > 0
    else:
        assert all(p.grad is None for p in head.language.text.parameters())  # frozen by default

    policy.eval()
    a, b = _chunk(policy, TASKS[0]), _chunk(policy, TASKS[1])
    assert not torch.allclose(a, b)  # the words change the chunk
    ckpt = policy.save(tmp_path / "ckpt")
    if model_dir is not None:
        shutil.rmtree(model_dir)  # the checkpoint holds the text encoder's architecture, weights and tokenizer
    loaded = Policy.load(ckpt)
    torch.testing.assert_close(_chunk(loaded, TASKS[0]), a, rtol=0, atol=0)
    torch.testing.assert_close(_chunk(loaded, TASKS[1]), b, rtol=0, atol=0)


def test_language_tokens_keep_the_cpu_fast_paths_equal_to_torch(dataset):
    policy = _policy(dataset, LanguageConfig(embed_dim=8)).train()
    batch = policy.prepare(_batch([TASKS[0], TASKS[1], TASKS[1]]))
    batch["action_is_pad"][1, 2:] = True
    results = []
    for on in (True, False):
        with kernels.override(on):
            torch.manual_seed(3)
            loss = policy.head.loss(batch).loss
            grad = torch.autograd.grad(loss, policy.head.language_in.weight)[0]
            policy.head.eval()
            chunk = policy.head.sample({k: v for k, v in batch.items() if k != "action"})
            policy.head.train()
        results.append((loss.detach(), grad, chunk))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
