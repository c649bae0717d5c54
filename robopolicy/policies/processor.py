"""Processor steps: what turns raw observations into head inputs beyond normalization, saved with the checkpoint.

A `Processor` is an ordered list of steps applied by `Policy.prepare` after normalization, on the head's device.
Each step is a registered class with a JSON state (processor.json beside stats.json) and optional files under
processor/<index>_<kind>/ (a tokenizer's files, for example). Built-in steps:

- `TaskVocabulary`: instruction strings -> `<key>.index` (B,) int64, from the dataset's tasks (datasets have few
  distinct tasks); an unknown instruction is an error that lists the known ones.
- `TaskTokenizer`: a transformers tokenizer (model name or local path) -> `<key>.input_ids`, `<key>.attention_mask`
  (B, max_length); its files are saved into the checkpoint, so loading never needs the hub.

A step from another package subclasses `ProcessorStep` with a unique `kind` and works like a built-in one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

PROCESSOR_FILE = "processor.json"
PROCESSOR_DIR = "processor"
_STEPS: dict[str, type[ProcessorStep]] = {}


class ProcessorError(ValueError):
    """A processor that cannot run or load; the message names the step and the file."""


class ProcessorStep(ABC):
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if ABC in cls.__bases__:
            return
        if not cls.kind:
            raise TypeError(f"{cls.__name__} needs a `kind`")
        _STEPS[cls.kind] = cls

    @abstractmethod
    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Add or replace entries of the prepared batch (tensors on `device`)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-able description (what `from_state` takes)."""

    def save_files(self, directory: Path) -> None:
        """Write the step's files (none by default)."""

    @classmethod
    def from_state(cls, state: dict[str, Any], directory: Path) -> ProcessorStep:
        return cls(**state)


class TaskVocabulary(ProcessorStep):
    """Instruction strings of language input `key` -> `<key>.index` (B,) int64 in the order of `tasks`."""

    kind = "task_vocabulary"

    def __init__(self, tasks: Sequence[str], key: str = "task"):
        if len(set(tasks)) != len(tasks):
            raise ProcessorError(f"TaskVocabulary: duplicate tasks in {list(tasks)}")
        self.tasks, self.key = list(tasks), key
        self._index = {t: i for i, t in enumerate(self.tasks)}

    def __call__(self, batch, device):
        if self.key not in batch:
            return batch
        try:
            idx = [self._index[t] for t in batch[self.key]]
        except KeyError as exc:
            raise ProcessorError(f"unknown instruction {exc.args[0]!r} for {self.key!r}; the policy was trained on "
                                 f"{self.tasks}") from None
        return {**batch, f"{self.key}.index": torch.tensor(idx, dtype=torch.long, device=device)}

    def state(self):
        return {"tasks": self.tasks, "key": self.key}


class TaskTokenizer(ProcessorStep):
    """Instruction strings of `key` -> `<key>.input_ids`, `<key>.attention_mask` (B, max_length) int64 through a
    transformers tokenizer (padded / truncated to max_length)."""

    kind = "task_tokenizer"

    def __init__(self, tokenizer: Any, key: str = "task", max_length: int = 32):
        if isinstance(tokenizer, str | Path):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer, self.key, self.max_length = tokenizer, key, max_length
        self._cache: dict[str, tuple[list[int], list[int]]] = {}

    def __call__(self, batch, device):
        if self.key not in batch:
            return batch
        texts = list(batch[self.key])
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            enc = self.tokenizer(todo, padding="max_length", truncation=True, max_length=self.max_length)
            for t, ids, mask in zip(todo, enc["input_ids"], enc["attention_mask"]):
                self._cache[t] = (ids, mask)
        ids = torch.tensor([self._cache[t][0] for t in texts], dtype=torch.long, device=device)
        mask = torch.tensor([self._cache[t][1] for t in texts], dtype=torch.long, device=device)
        return {**batch, f"{self.key}.input_ids": ids, f"{self.key}.attention_mask": mask}

    def state(self):
        return {"key": self.key, "max_length": self.max_length}

    def save_files(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_state(cls, state, directory):
        return cls(directory, **state)


class Processor:
    """An ordered list of processor steps; empty by default (a policy without language or extra transforms)."""

    def __init__(self, steps: Sequence[ProcessorStep] = ()):
        self.steps = list(steps)

    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        for step in self.steps:
            batch = step(batch, device)
        return batch

    def __len__(self) -> int:
        return len(self.steps)

    def save(self, checkpoint_dir: str | Path) -> None:
        """processor.json (+ processor/<i>_<kind>/ files) in the checkpoint directory; nothing when empty."""
        checkpoint_dir = Path(checkpoint_dir)
        if not self.steps:
            return
        entries = []
        for i, step in enumerate(self.steps):
            files = f"{PROCESSOR_DIR}/{i}_{step.kind}"
            (checkpoint_dir / files).mkdir(parents=True, exist_ok=True)
            step.save_files(checkpoint_dir / files)
            entries.append({"kind": step.kind, "state": step.state(), "files": files})
        (checkpoint_dir / PROCESSOR_FILE).write_text(json.dumps({"steps": entries}, indent=2))

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> Processor:
        path = Path(checkpoint_dir) / PROCESSOR_FILE
        if not path.exists():
            return cls()
        try:
            entries = json.loads(path.read_text())["steps"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ProcessorError(f"{path}: not a processor file ({type(exc).__name__}: {exc}); re-save the "
                                 "checkpoint or pick another one") from None
        if not isinstance(entries, list):
            raise ProcessorError(f"{path}: 'steps' must be a list of steps, got {type(entries).__name__}; re-save "
                                 "the checkpoint or pick another one")
        steps = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("files", ""), str) or not isinstance(
                    entry.get("state", {}), dict):
                raise ProcessorError(f"{path}: step {i} must be a mapping with 'kind', 'state' (a mapping) and "
                                     f"'files' (a path), got {str(entry)[:80]}; re-save the checkpoint or pick "
                                     "another one")
            kind = entry.get("kind")
            if not isinstance(kind, str) or kind not in _STEPS:
                raise ProcessorError(f"{path}: step {i} has unknown kind {kind!r}; known: {sorted(_STEPS)} "
                                     "(import the package that defines it)")
            try:
                steps.append(_STEPS[kind].from_state(entry.get("state", {}), Path(checkpoint_dir) / entry["files"]))
            except ProcessorError:
                raise
            except Exception as exc:
                raise ProcessorError(f"{path}: step {i} ({kind}) failed to load from "
                                     f"{Path(checkpoint_dir) / entry.get('files', '?')}: {type(exc).__name__}: {exc}"
                                     ) from exc
        return cls(steps)
