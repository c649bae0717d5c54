"""Errors of the simulation layer."""

from __future__ import annotations

from robopolicy.config_parsing import ConfigError


class EnvMismatchError(ConfigError, KeyError):
    """The policy asks for an observation, shape or image size the simulator cannot provide (bad input: the
    command line exits 2 with this message). Also a KeyError, for callers that catch a missing observation."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""
