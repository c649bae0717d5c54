"""Execution of policy chunks, shared by simulation evaluation and hardware deployment: chunk executors, the
fixed-rate loop, safety (limits, watchdog, e-stop), real-time chunking and asynchronous inference."""

from robopolicy.runtime.async_inference import AsyncChunker, ProcessChunkSource, RemotePolicyClient
from robopolicy.runtime.executors import (
    ChunkExecutor,
    RecedingHorizon,
    TemporalEnsembler,
    make_executor,
    now_index,
)
from robopolicy.runtime.history import ObservationHistory
from robopolicy.runtime.loop import FixedRateLoop, set_realtime_priority
from robopolicy.runtime.policy_server import PolicyServer
from robopolicy.runtime.protocol import ChunkPolicy
from robopolicy.runtime.rtc import RTCConfig, rtc_sample
from robopolicy.runtime.safety import SafetyConfig, SafetyFilter, SafetyGuard, SafetyStop

__all__ = [
    "AsyncChunker",
    "ChunkExecutor",
    "ChunkPolicy",
    "FixedRateLoop",
    "ObservationHistory",
    "PolicyServer",
    "ProcessChunkSource",
    "RTCConfig",
    "RecedingHorizon",
    "RemotePolicyClient",
    "SafetyConfig",
    "SafetyFilter",
    "SafetyGuard",
    "SafetyStop",
    "TemporalEnsembler",
    "make_executor",
    "now_index",
    "rtc_sample",
    "set_realtime_priority",
]
