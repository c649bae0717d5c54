"""Config of the test-only MLP flow head (registered as "mlp_flow_plugin")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class MLPFlowConfig(PolicyConfig):
    """Clean-chunk MLP over the flattened noisy chunk; conditions on the state window and, with a language input, on a
    learned embedding of the instruction (index from the policy's TaskVocabulary processor step)."""

    name: ClassVar[str] = "mlp_flow_plugin"
    head_class: ClassVar[str] = "MLPFlowHead"

    n_obs_steps: int = 1
    horizon: int = 8
    n_action_steps: int = 4
    hidden: int = 256
    num_tasks: int = 4
    steps: int = 8

    def processor_steps(self, tasks):
        from robopolicy.policies.processor import TaskVocabulary

        return [TaskVocabulary(tasks, key) for key in self.language_keys]
