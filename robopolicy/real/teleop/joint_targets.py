"""What the keyboard and gamepad teleoperators share: per-joint targets moved by user input, clamped to limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robopolicy.real.robots.base import Teleoperator


class JointTargetTeleop(Teleoperator):
    """Holds ``target`` {joint: value} in the follower's normalized units; subclasses move it in ``get_action``.
    Targets start at ``initial`` (or 0; call ``reset(robot.get_observation())`` to start from where the robot is)
    and are clamped to ``limits`` {joint: (lo, hi)}."""

    def __init__(self, joints: Sequence[str], *, limits: Mapping[str, tuple[float, float]] | None = None,
                 initial: Mapping[str, float] | None = None, name: str):
        self.name = name
        self.joints = list(joints)
        self.limits = dict(limits or {})
        self.target = dict.fromkeys(self.joints, 0.0)
        if initial:
            self.reset(initial)

    @classmethod
    def from_robot_config(cls, config, **kwargs: Any):
        """Joints and limits from the follower's RobotConfig (or YAML path)."""
        from robopolicy.real.robots.config import resolve_config

        config = resolve_config(config)
        return cls(config.joint_names, limits={m.name: m.limits for m in config.motors}, **kwargs)

    @property
    def action_features(self) -> dict[str, type]:
        return {f"{j}.pos": float for j in self.joints}

    def reset(self, positions: Mapping[str, float]) -> None:
        """Set the targets from ``{"<joint>.pos": value}`` (or ``{joint: value}``); other keys are ignored."""
        for joint in self.joints:
            for key in (f"{joint}.pos", joint):
                if key in positions:
                    self.target[joint] = self._clamp(joint, float(positions[key]))
                    break

    def _clamp(self, joint: str, value: float) -> float:
        if joint in self.limits:
            lo, hi = self.limits[joint]
            return min(max(value, lo), hi)
        return value

    def _nudge(self, joint: str, delta: float) -> None:
        self.target[joint] = self._clamp(joint, self.target[joint] + delta)

    def _targets(self) -> dict[str, float]:
        return {f"{j}.pos": self.target[j] for j in self.joints}
