"""Task strings travel dataset -> sampler -> processor -> head, on both formats and on LeRobot's real PushT data;
the processor is saved in the checkpoint and loaded with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from robopolicy.config_parsing import ConfigError
from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import Feature
from robopolicy.data.normalize import StatsMismatchError
from robopolicy.data.sampler import WindowSampler
from robopolicy.data.stats import compute_stats
from robopolicy.data.writer import create_writer
from robopolicy.policies.base import GUIDANCE
from robopolicy.policies.policy import TASK_KEY, Policy
from robopolicy.policies.processor import Processor, ProcessorError, TaskTokenizer
from robopolicy.policies.registry import get_config_class, register_policy
from tests.plugin_heads.configuration import MLPFlowConfig
from tests.plugin_heads.modeling import MLPFlowHead

FEATURES = {
    "observation.state": Feature("observation.state", "float32", (3,), "state"),
    "action": Feature("action", "float32", (2,), "action"),
}
TASKS = ["pick up the can", "open the door", "pick up the can"]  # episode -> task


def _write(root, fmt):
    rng = np.random.default_rng(0)
    with create_writer(root, FEATURES, fps=10, format=fmt) as w:
        for task in TASKS:
            for _ in range(12):
                w.add_frame({"observation.state": rng.normal(size=3).astype(np.float32),
                             "action": rng.normal(size=2).astype(np.float32)}, task=task)
            w.save_episode()
    return open_dataset(root)


def _language_policy(ds):
    cls = get_config_class("mlp_flow_plugin")
    stats = compute_stats(ds, ["observation.state", "action"])
    # the head's config asks for a TaskVocabulary over the dataset's tasks (processor_steps)
    return Policy.from_dataset(cls, ds, stats, input_keys=["observation.state", TASK_KEY], horizon=4,
                               n_action_steps=2)


@pytest.mark.parametrize("fmt", ["zarr", "lerobot"])
def test_task_strings_reach_the_head_and_survive_the_checkpoint(tmp_path, fmt):
    ds = _write(tmp_path / "ds", fmt)
    policy = _language_policy(ds)
    assert policy.config.input_features[TASK_KEY].kind == "language"
    windows = WindowSampler(ds, policy.config.delta_indices())
    assert TASK_KEY not in policy.config.delta_indices()
    batch = windows.get_batch([0, 11, 12, 30])
    assert batch["task"] == ["pick up the can", "pick up the can", "open the door", "pick up the can"]
    prepared = policy.prepare(batch)
    expected = [ds.tasks.index(t) for t in batch["task"]]
    assert prepared["task.index"].tolist() == expected
    out = policy.loss(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert policy.head.task_embed.weight.grad[expected].abs().sum() > 0  # the instruction conditions the head

    policy.eval()
    obs = {"observation.state": torch.zeros(1, 1, 3)}
    a = policy.predict_chunk({**obs, "task": "open the door"}, torch.Generator().manual_seed(0))
    b = policy.predict_chunk({**obs, "task": "pick up the can"}, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
    policy.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "processor.json").exists()
    loaded = Policy.load(tmp_path / "ckpt")
    assert loaded.processor.steps[0].tasks == ds.tasks
    torch.testing.assert_close(loaded.predict_chunk({**obs, "task": "open the door"},
                                                    torch.Generator().manual_seed(0)), a)
    with pytest.raises(ProcessorError, match=r"unknown instruction 'open teh door'.*trained on"):
        loaded.predict_chunk({**obs, "task": "open teh door"})


def test_a_language_policy_needs_a_dataset_with_tasks(pusht_zarr):
    ds = open_dataset(pusht_zarr)  # diffusion_policy's store: no task strings
    with pytest.raises(StatsMismatchError, match="has no task strings"):
        Policy.from_dataset(get_config_class("mlp_flow_plugin"), ds, compute_stats(ds, ["state", "action"]),
                            input_keys=["state", TASK_KEY])


@register_policy
@dataclass(frozen=True)
class _NoLanguageConfig(MLPFlowConfig):
    name: ClassVar[str] = "no_language_plugin"


class _NoLanguageHead(MLPFlowHead):
    """The plugin head without the LANGUAGE capability (every built-in head has it)."""

    config_class = _NoLanguageConfig
    capabilities = frozenset({GUIDANCE})


def test_heads_without_the_language_capability_refuse_an_instruction(tmp_path):
    ds = _write(tmp_path / "ds", "zarr")
    with pytest.raises(ConfigError, match=r"does not condition on an instruction, but \['task'\].*data.input_keys"):
        Policy.from_dataset(_NoLanguageConfig, ds, compute_stats(ds, ["observation.state", "action"]),
                            input_keys=["observation.state", TASK_KEY])


def test_train_command_refuses_an_instruction_for_a_head_without_language(tmp_path, capsys):
    from robopolicy.cli.main import main

    ds = _write(tmp_path / "ds", "zarr")
    rc = main(["train", f"--data.uri={tmp_path / 'ds'}", "--data.input_keys=[observation.state,task]",
               "--train.steps=1", "--train.batch_size=4", f"--train.output_dir={tmp_path / 'run'}",
               "--policy.type=no_language_plugin"])
    err = capsys.readouterr().err
    assert rc == 2 and "_NoLanguageHead does not condition on an instruction" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists() and ds.num_episodes == 3


def test_real_lerobot_task_reaches_the_head(lerobot_pusht):
    ds = open_dataset(lerobot_pusht)
    policy = _language_policy(ds)
    batch = WindowSampler(ds, policy.config.delta_indices()).get_batch([0, 5000])
    assert batch["task"] == ["Push the T-shaped block onto the T-shaped target."] * 2
    assert policy.prepare(batch)["task.index"].tolist() == [0, 0]
    assert torch.isfinite(policy.loss(batch).loss)


def _tiny_tokenizer(tmp_path):
    """A word-level fast tokenizer built here (nothing downloads), saved as transformers files."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "pick": 2, "up": 3, "the": 4, "can": 5, "open": 6, "door": 7}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(str(tmp_path / "tok"))
    return tmp_path / "tok"


def test_task_tokenizer_is_saved_in_the_checkpoint(tmp_path):
    step = TaskTokenizer(_tiny_tokenizer(tmp_path), max_length=6)
    out = step({"task": ["pick up the can", "open the door", "pick up the can"]}, torch.device("cpu"))
    assert out["task.input_ids"].tolist()[0] == [2, 3, 4, 5, 0, 0]
    assert out["task.attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]
    Processor([step]).save(tmp_path / "ckpt")
    again = Processor.load(tmp_path / "ckpt")
    assert again.steps[0].max_length == 6
    torch.testing.assert_close(again({"task": ["open the door"]}, torch.device("cpu"))["task.input_ids"],
                               out["task.input_ids"][1:2])


def test_broken_processor_file_names_the_file(tmp_path):
    (tmp_path / "processor.json").write_text('{"steps": [{"kind": "warp_drive", "state": {}, "files": "x"}]}')
    with pytest.raises(ProcessorError, match=r"processor.json: step 0 has unknown kind 'warp_drive'"):
        Processor.load(tmp_path)
    (tmp_path / "processor.json").write_text("{not json")
    with pytest.raises(ProcessorError, match="not a processor file"):
        Processor.load(tmp_path)
