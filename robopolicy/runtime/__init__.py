"""Execution of policy chunks, shared by simulation evaluation and hardware deployment."""

from robopolicy.runtime.executors import (
    ChunkExecutor,
    RecedingHorizon,
    TemporalEnsembler,
    make_executor,
    now_index,
)
from robopolicy.runtime.history import ObservationHistory
from robopolicy.runtime.protocol import ChunkPolicy

__all__ = [
    "ChunkExecutor",
    "ChunkPolicy",
    "ObservationHistory",
    "RecedingHorizon",
    "TemporalEnsembler",
    "make_executor",
    "now_index",
]
