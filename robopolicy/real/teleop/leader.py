"""A leader arm as teleoperator: the same servos and calibration as its follower, read with torque off.

Built from a RobotConfig of kind "teleoperator" (real/so101_leader.yaml, real/koch_leader.yaml) over the generic
Arm: motors with ``torque: false`` move freely by hand; a motor with ``torque: true`` and a ``goal`` (the Koch
leader's gripper) is held at that goal in current-based position mode, so it springs back like a trigger.
``get_action`` costs one sync read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from robopolicy.real.robots.arm import Arm, CalibrationSource
from robopolicy.real.robots.base import Teleoperator
from robopolicy.real.robots.config import RobotConfig, resolve_config


class LeaderArm(Teleoperator):
    """``get_action() -> {"<joint>.pos": value}`` in the follower's normalized units."""

    def __init__(
        self,
        config: RobotConfig | str | os.PathLike | Mapping,
        *,
        port: str | None = None,
        calibration: CalibrationSource = None,
        bus: Any = None,
        prompt: Callable[[str], Any] = input,
    ):
        config = resolve_config(config)
        if config.kind != "teleoperator":
            raise ValueError(f"{config.source or config.name} describes a {config.kind}, not a leader arm")
        self.arm = Arm(config, port=port, cameras={}, calibration=calibration, bus=bus, prompt=prompt)
        self.config = config
        self.name = config.name

    @property
    def bus(self):
        return self.arm.bus

    @property
    def action_features(self) -> dict[str, type]:
        return self.arm.action_features

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    @property
    def is_calibrated(self) -> bool:
        return self.arm.is_calibrated

    @property
    def calibration_path(self):
        return self.arm.calibration_path

    def connect(self, calibrate: bool = True) -> None:
        self.arm.connect(calibrate)

    def calibrate(self) -> None:
        self.arm.calibrate()

    def configure(self) -> None:
        self.arm.configure()

    def get_action(self) -> dict[str, float]:
        return self.arm.read_positions()

    def disconnect(self) -> None:
        self.arm.disconnect()
