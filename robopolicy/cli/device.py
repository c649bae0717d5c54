"""The `--device` option of the commands that run a policy (eval, serve, deploy)."""

from __future__ import annotations

import argparse


def add_device_argument(p: argparse.ArgumentParser, default: str | None = "cpu", what: str = "%(default)s") -> None:
    p.add_argument("--device", default=default,
                   help=f"torch device for the policy: cpu, cuda, cuda:1, mps ... (default: {what})")


def check_device(name: str) -> str:
    """`name` if torch can run on it here, else a ConfigError with the reason (exit 2, one line)."""
    import torch

    from robopolicy.config_parsing import ConfigError

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available here (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name!r}: MPS is not available here")
    return name
