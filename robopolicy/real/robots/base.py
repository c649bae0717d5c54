"""The Robot and Teleoperator contracts (DESIGN.md; same shape as LeRobot's).

Feature dicts: ``"<joint>.pos": float`` for joints, ``"<camera>": (height, width, 3)`` for cameras (uint8 RGB).
Both are context managers: ``with robot: ...`` connects and always disconnects.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


class DeviceNotConnectedError(RuntimeError):
    """An operation needs a connected device."""


class DeviceAlreadyConnectedError(RuntimeError):
    """connect() on a device that is already connected."""


class _Device(ABC):
    name: str = "device"

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @property
    def is_calibrated(self) -> bool:
        return True

    @abstractmethod
    def connect(self, calibrate: bool = True) -> None: ...

    def calibrate(self) -> None:
        """Run the (interactive) calibration; devices without one do nothing."""

    def configure(self) -> None:
        """Write the device's settings (registers, modes) after connecting."""

    @abstractmethod
    def disconnect(self) -> None: ...

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.is_connected:
            self.disconnect()

    def __del__(self) -> None:
        # Safety net for scripts that forget to disconnect; errors cannot propagate from __del__.
        try:
            if self.is_connected:
                logger.warning("%s was not disconnected; disconnecting in __del__", self.name)
                self.disconnect()
        except Exception:
            pass

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self.name} is not connected; call connect() first")


class Robot(_Device):
    """A robot: observe, act. ``send_action`` returns the action really sent (after clamps)."""

    @property
    @abstractmethod
    def observation_features(self) -> dict[str, type | tuple]: ...

    @property
    @abstractmethod
    def action_features(self) -> dict[str, type]: ...

    @abstractmethod
    def get_observation(self) -> dict[str, Any]: ...

    @abstractmethod
    def send_action(self, action: Mapping[str, float]) -> dict[str, float]: ...


class Teleoperator(_Device):
    """A teleoperation device producing actions in the robot's action space."""

    @property
    @abstractmethod
    def action_features(self) -> dict[str, type]: ...

    @property
    def feedback_features(self) -> dict[str, type]:
        return {}

    @abstractmethod
    def get_action(self) -> dict[str, float]: ...

    def send_feedback(self, feedback: Mapping[str, float]) -> None:
        """Force/haptic feedback; devices without feedback accept only an empty mapping."""
        if feedback:
            raise NotImplementedError(f"{self.name} takes no feedback (got keys {sorted(feedback)})")
