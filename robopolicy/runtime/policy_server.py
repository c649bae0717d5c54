"""Serve a policy's chunks to a control process: the wire format, the request handler and a TCP server.

Wire format (little-endian; no pickle anywhere, so a message can only ever become numbers):

    frame  = prefix | header | body
    prefix = b"RPW1" | u32 header length | u32 body length
    header = UTF-8 JSON {"kind": str, "meta": {...}, "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}]}
    body   = the arrays' raw C-order bytes at their offsets

dtypes are numpy little-endian codes from a fixed list (bool, u1..u8, i1..i8, f2, f4, f8). The same frames travel
over a multiprocessing pipe (ProcessChunkSource) and over TCP (RemotePolicyClient).

Requests: "info" -> "info" {meta: policy description, including its capabilities and language inputs};
"predict" with arrays "obs:<key>" (B, T_o, ...) raw observation windows, meta {"task": str or B strings} (the
instruction, for policies with a language input), optional "prev_actions" (B, R, D) plus meta {"delay", "rtc":
RTCConfig fields} for real-time chunking (policies with the "guidance" capability) and meta {"seed"} for
reproducible sampling -> "chunk" with array "action" (B, H, D) float32 and meta {"inference_s"}.
Failures -> "error" {meta: {"message", "type"}}; the connection stays usable. Observations with NaN / inf or
|x| > MAX_OBS_ABS, and chunks that come out non-finite, get an error reply instead of a chunk.

Faulty peers (see PolicyServer): sizes are checked against limits before anything is allocated, every read has a
deadline (a frame that has started must be complete within frame_timeout_s), JSON headers are size-bounded and
too-deep nesting is a ProtocolError; the peer gets an "error" frame and is dropped, other connections go on.

    python -m robopolicy.runtime.policy_server --checkpoint runs/x --host 0.0.0.0 --port 8765
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"RPW1"
PREFIX = struct.Struct("<4sII")
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of JSON: array specs, instructions, RTC settings
MAX_BODY_BYTES = 64 << 20  # 64 MiB of arrays: e.g. 8 samples x 2 steps x 3 cameras of 480x640x3 uint8 is 44 MiB
RECV_CHUNK_BYTES = 64 << 10  # a frame grows with the bytes that really arrived, never by what its prefix announces
LINGER_S, LINGER_BYTES = 0.25, 1 << 20  # draining a dropped peer's unread bytes before closing
DEFAULT_FRAME_TIMEOUT_S = 10.0  # a frame that has started must be complete within this
MAX_OBS_ABS = 1e6  # |observation| above this is a sensor or client fault (joint units are <= a few thousand)
MAX_DIMS = 32  # numpy's own limit is 64
DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A frame that does not follow the wire format (the message says which part)."""


class FrameTimeout(ProtocolError):
    """A peer stopped sending in the middle of a frame, or sent nothing for longer than allowed."""


class RemotePolicyError(RuntimeError):
    """The policy process or server failed to answer a request; the message is the remote error.
    request_id: the request that failed (None when not known)."""

    def __init__(self, message: str, request_id: int | None = None):
        super().__init__(message)
        self.request_id = request_id


class ServerAddressError(RemotePolicyError):
    """The policy server cannot listen on the address it was given (port in use, bad host, no permission)."""


@dataclass
class Message:
    kind: str
    meta: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _wire_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.str not in DTYPES:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent; use one of {sorted(DTYPES)}")
    return np.ascontiguousarray(arr)


def encode(message: Message) -> bytes:
    """One frame for `message` (arrays: numpy or torch; converted to contiguous little-endian)."""
    specs, chunks, offset = [], [], 0
    for name, value in message.arrays.items():
        arr = _wire_array(value)
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                      "nbytes": arr.nbytes})
        chunks.append(arr.tobytes())
        offset += arr.nbytes
    header = json.dumps({"kind": message.kind, "meta": message.meta, "arrays": specs}).encode()
    if len(header) > MAX_HEADER_BYTES or offset > MAX_BODY_BYTES:
        raise ProtocolError(f"message too large: header {len(header)} B (max {MAX_HEADER_BYTES}), body {offset} B "
                            f"(max {MAX_BODY_BYTES})")
    return b"".join([PREFIX.pack(MAGIC, len(header), offset), header, *chunks])


def parse_prefix(prefix: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
                 ) -> tuple[int, int]:
    """(header length, body length) in bytes from the 12-byte prefix, checked against the limits before anything
    is allocated for them."""
    if len(prefix) != PREFIX.size:
        raise ProtocolError(f"truncated frame prefix: {len(prefix)} of {PREFIX.size} bytes")
    magic, header_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a robopolicy policy-server peer")
    if header_len > max_header_bytes or body_len > max_body_bytes:
        raise ProtocolError(f"frame too large: header {header_len} B (limit {max_header_bytes}), body {body_len} B "
                            f"(limit {max_body_bytes}); send smaller observations or raise the peer's limit")
    return header_len, body_len


def decode_parts(header: bytearray | bytes, body: bytearray | bytes) -> Message:
    try:
        head = json.loads(bytes(header).decode())
        kind, meta, specs = head["kind"], head.get("meta", {}), head.get("arrays", [])
    except RecursionError as exc:  # json recurses once per nesting level: a deep header is an attack, not a bug
        raise ProtocolError("bad frame header: JSON nested too deeply") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"bad frame header: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise ProtocolError("bad frame header: kind must be a string, meta an object, arrays a list")
    buf = body if isinstance(body, bytearray) else bytearray(body)  # writable arrays (torch.from_numpy needs it)
    arrays = {}
    for spec in specs:
        try:
            name, dtype, shape = str(spec["name"]), str(spec["dtype"]), tuple(int(s) for s in spec["shape"])
            offset, nbytes = int(spec["offset"]), int(spec["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad array spec {spec!r}: {exc}") from exc
        if dtype not in DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {dtype!r} not allowed")
        if len(shape) > MAX_DIMS:
            raise ProtocolError(f"array {name!r}: {len(shape)} dimensions (at most {MAX_DIMS})")
        if any(s < 0 for s in shape) or math.prod(shape) * np.dtype(dtype).itemsize != nbytes:
            raise ProtocolError(f"array {name!r}: shape {shape} and dtype {dtype} do not make {nbytes} bytes")
        if offset < 0 or offset + nbytes > len(buf):
            raise ProtocolError(f"array {name!r}: bytes {offset}..{offset + nbytes} outside the {len(buf)}-byte body")
        arrays[name] = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    return Message(kind, meta, arrays)


def decode(frame: bytes | bytearray) -> Message:
    """A whole frame (as received from a pipe) -> Message."""
    header_len, body_len = parse_prefix(bytes(frame[: PREFIX.size]))
    if len(frame) != PREFIX.size + header_len + body_len:
        raise ProtocolError(f"frame is {len(frame)} bytes, its prefix announces {PREFIX.size + header_len + body_len}")
    header = frame[PREFIX.size : PREFIX.size + header_len]
    return decode_parts(header, bytearray(frame[PREFIX.size + header_len :]))


def _recv_exact(sock: socket.socket, n: int, deadline: float | None, what: str) -> bytearray:
    """n bytes from `sock` by `deadline` (time.monotonic() seconds; None = no limit). The buffer grows with the
    bytes that arrive (RECV_CHUNK_BYTES at a time), so a peer that announces a large frame and sends little
    costs little. Raises FrameTimeout at the deadline, ConnectionError when the peer closes."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout(f"the peer sent {len(buf)} of {n} {what} bytes, then nothing until the deadline")
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        try:
            data = sock.recv(min(n - len(buf), RECV_CHUNK_BYTES))
        except TimeoutError:
            raise FrameTimeout(f"the peer sent {len(buf)} of {n} {what} bytes, then nothing until the deadline"
                               ) from None
        if not data:
            raise ConnectionError(f"peer closed the connection after {len(buf)} of {n} {what} bytes")
        buf += data
    return buf


def recv_message(sock: socket.socket, *, timeout: float | None = None, first_byte_timeout: float | None = None,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES) -> Message:
    """Read exactly one frame from a stream socket.

    first_byte_timeout: seconds to wait for the frame to start (None = forever; a server waits for the next
    request, a client for inference); timeout: seconds for the whole frame once it has started (None = forever).
    Sizes are checked against the limits before anything is allocated. Raises FrameTimeout, ProtocolError or
    ConnectionError; after any of them the stream is out of step and the connection must be closed."""
    start = None if first_byte_timeout is None else time.monotonic() + first_byte_timeout
    try:
        first = _recv_exact(sock, 1, start, "frame")
    except FrameTimeout:
        raise FrameTimeout(f"nothing received for {first_byte_timeout} s") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        prefix = first + _recv_exact(sock, PREFIX.size - 1, deadline, "prefix")
        header_len, body_len = parse_prefix(bytes(prefix), max_header_bytes=max_header_bytes,
                                            max_body_bytes=max_body_bytes)
        header = _recv_exact(sock, header_len, deadline, "header")
        body = _recv_exact(sock, body_len, deadline, "body")
    except FrameTimeout as exc:
        raise FrameTimeout(f"{exc} ({timeout} s allowed per frame)") from None
    return decode_parts(header, body)


def send_frame(sock: socket.socket, frame: bytes, *, timeout: float | None = None) -> None:
    """Send an encoded frame; timeout: seconds for all of it (a peer that stops reading fills the buffers)."""
    sock.settimeout(timeout)
    try:
        sock.sendall(frame)
    except TimeoutError:
        raise FrameTimeout(f"the peer did not read a {len(frame)}-byte frame within {timeout} s") from None


def send_message(sock: socket.socket, message: Message, *, timeout: float | None = None) -> None:
    """encode + send_frame."""
    send_frame(sock, encode(message), timeout=timeout)


# ----- request handling -----------------------------------------------------------------------------


def policy_info(policy) -> dict:
    """What a client needs to drive the policy: windows, chunk layout and input features."""
    cfg = policy.config
    return {
        "protocol": PROTOCOL_VERSION,
        "policy": type(cfg).name if hasattr(type(cfg), "name") else type(cfg).__name__,
        "n_obs_steps": cfg.n_obs_steps,
        "horizon": cfg.horizon,
        "n_action_steps": cfg.n_action_steps,
        "action_delta_indices": list(cfg.action_delta_indices),
        "action_key": cfg.action_key,
        "action_dim": cfg.action_dim,
        "input_features": {k: {"shape": list(f.shape), "kind": f.kind} for k, f in cfg.input_features.items()},
        "capabilities": sorted(getattr(policy.head, "capabilities", ())) if hasattr(policy, "head") else [],
        "language_inputs": [k for k, f in cfg.input_features.items() if f.kind == "language"],
    }


class PolicyService:
    """Answers wire requests with a loaded Policy (one request at a time). Observations must be finite with
    |value| <= max_obs_abs (their raw units), and so must the chunk: anything else gets an error reply.
    default_task: the instruction of a language-conditioned policy for requests that send none."""

    def __init__(self, policy, *, max_obs_abs: float = MAX_OBS_ABS, default_task: str | None = None):
        self.policy = policy.eval() if hasattr(policy, "eval") else policy
        self.max_obs_abs = float(max_obs_abs)
        self.default_task = default_task
        self.info = policy_info(policy)
        if default_task is not None and not self.info["language_inputs"]:
            from robopolicy.config_parsing import ConfigError

            raise ConfigError(f"--task {default_task!r}: this policy takes no instruction (no 'language' input); "
                              "drop --task")
        self._lock = threading.Lock()

    def warmup(self) -> None:
        """Run one plain and (for heads with the guidance capability) one real-time-chunking request on zeros, so
        the first real request does not pay for lazy initialisation (the first backward pass of a fresh process
        took ~2 s)."""
        import torch

        from robopolicy.runtime.rtc import RTCConfig, rtc_sample

        t_o, horizon = self.info["n_obs_steps"], self.info["horizon"]
        obs: dict = {k: torch.zeros((1, t_o, *spec["shape"]),
                                    dtype=torch.uint8 if spec["kind"] == "image" else torch.float32)
                     for k, spec in self.info["input_features"].items() if spec["kind"] != "language"}
        obs.update({k: [self.default_task or self._warmup_task()] for k in self.info["language_inputs"]})
        with self._lock:
            self.policy.predict_chunk(obs)
            if "guidance" in self.info["capabilities"]:
                prev = torch.zeros((1, horizon // 2, self.info["action_dim"]))
                rtc_sample(self.policy, obs, prev, 1, RTCConfig())

    def _warmup_task(self) -> str:
        """An instruction the policy accepts (its first trained task when a vocabulary restricts them)."""
        for step in getattr(getattr(self.policy, "processor", None), "steps", ()):
            if getattr(step, "tasks", None):
                return step.tasks[0]
        return ""

    def handle(self, request: Message) -> Message:
        try:
            if request.kind == "info":
                return Message("info", self.info)
            if request.kind == "predict":
                return self._predict(request)
            raise ValueError(f"unknown request kind {request.kind!r}; expected 'info' or 'predict'")
        except Exception as exc:  # reported to the client, which raises RemotePolicyError
            return Message("error", {"message": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__,
                                     "id": request.meta.get("id")})

    def _observation(self, request: Message) -> dict:
        import torch

        obs: dict = {k[4:]: v for k, v in request.arrays.items() if k.startswith("obs:")}
        t_o = self.info["n_obs_steps"]
        batch = None
        for key, spec in self.info["input_features"].items():
            if spec["kind"] == "language":
                continue
            if key not in obs:
                raise KeyError(f"observation lacks {key!r}; the policy takes {sorted(self.info['input_features'])}")
            if obs[key].ndim != 2 + len(spec["shape"]) or list(obs[key].shape[1:]) != [t_o, *spec["shape"]]:
                raise ValueError(f"observation {key!r} has shape {tuple(obs[key].shape)}, expected (B, {t_o}, "
                                 f"{', '.join(map(str, spec['shape']))})")
            batch = obs[key].shape[0]
        for key, value in obs.items():
            check_finite_observation(key, value, self.max_obs_abs)
        out = {k: torch.from_numpy(v) for k, v in obs.items()}
        for key in self.info["language_inputs"]:
            out[key] = request_tasks(request.meta.get("task", self.default_task), batch)
        return out

    def _predict(self, request: Message) -> Message:
        import torch

        from robopolicy.runtime.rtc import RTCConfig, rtc_sample

        obs = self._observation(request)
        seed = request.meta.get("seed")
        device = getattr(self.policy, "device", torch.device("cpu"))  # sampling noise is drawn on the policy's device
        generator = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
        prev = request.arrays.get("prev_actions")
        with self._lock:
            start = time.perf_counter()
            if prev is not None:
                cfg = RTCConfig(**request.meta.get("rtc", {}))
                chunk = rtc_sample(self.policy, obs, torch.from_numpy(prev), int(request.meta.get("delay", 0)), cfg,
                                   generator)
            else:
                chunk = self.policy.predict_chunk(obs, generator)
            elapsed = time.perf_counter() - start
        action = chunk.detach().cpu().numpy().astype(np.float32, copy=False)
        if not np.isfinite(action).all():
            raise FloatingPointError(f"the policy produced {int((~np.isfinite(action)).sum())} non-finite action "
                                     "values from finite observations; no chunk sent")
        return Message("chunk", {"inference_s": elapsed, "id": request.meta.get("id")}, {"action": action})


def check_finite_observation(key: str, value: np.ndarray, max_abs: float) -> None:
    """Raise ValueError naming `key` if a numeric observation window holds NaN / inf or |x| > max_abs (raw units).
    bool and 8-bit arrays (images) cannot be out of range and are not scanned."""
    if value.dtype.kind not in "fiu" or value.dtype.itemsize == 1 or value.size == 0:
        return
    if value.dtype.kind == "f":
        bad = ~np.isfinite(value)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"observation {key!r} holds {int(bad.sum())} NaN / inf value(s) (first at index "
                             f"{where}); a sensor or the client is faulty, no chunk computed")
    peak = float(np.abs(value.astype(np.float64, copy=False)).max())
    if peak > max_abs:
        raise ValueError(f"observation {key!r} reaches |x| = {peak:.3g}, above the server's limit {max_abs:.3g} "
                         "(raw units); a sensor or the client is faulty, no chunk computed")


def request_tasks(task, batch: int | None) -> list[str]:
    """meta["task"] (one string for the batch, or one per sample) -> B instruction strings."""
    if task is None:
        raise ValueError("this policy takes an instruction: send meta {'task': 'pick up the cube'} (a string, or "
                         "one per sample) with the predict request")
    tasks = [task] * (batch or 1) if isinstance(task, str) else list(task)
    if not all(isinstance(t, str) for t in tasks) or (batch is not None and len(tasks) != batch):
        raise ValueError(f"meta 'task' must be a string or {batch} strings (one per sample), got {task!r}")
    return tasks


# ----- TCP server -----------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port) (port 0: a free one). Raises ServerAddressError naming the address
    and what to do (port in use, out of range, no permission, unknown host) before anything else is started."""
    if not 0 <= int(port) <= 65535:
        raise ServerAddressError(f"port {port} is outside 0..65535; pick a free port such as {DEFAULT_PORT}")
    try:
        return socket.create_server((host, int(port)))
    except OSError as exc:
        hints = {errno.EADDRINUSE: "another process (a running `robopolicy serve`?) listens there: stop it or pick "
                                   "another --port",
                 errno.EACCES: "ports below 1024 need root: pick a port above 1024",
                 errno.EADDRNOTAVAIL: "this machine has no such address: bind 127.0.0.1, 0.0.0.0 or one of its own "
                                      "addresses"}
        hint = hints.get(exc.errno, "check --host and --port")
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ServerAddressError(f"cannot listen on {host}:{port}: {reason}; {hint}") from None


def _error(message: str, kind: str, request_id=None) -> Message:
    return Message("error", {"message": message, "type": kind, "id": request_id})


class PolicyServer:
    """Serves a PolicyService over TCP, one thread per connection (inference itself is serialized).

    A peer can only cost bounded resources and time: frames are limited to max_header_bytes / max_body_bytes
    (checked before allocating; buffers grow with the bytes that really arrive), a frame that has started must be
    complete within frame_timeout_s (replies, too, must be read within it), a connection that sends nothing for
    idle_timeout_s is closed (None: kept open between requests), and at most max_connections peers are served at
    once (more get an error reply). A misbehaving peer gets an error frame naming the fault and is dropped; the
    others are not affected. No authentication: bind to 127.0.0.1 (default) or a trusted network only."""

    def __init__(self, service, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S, idle_timeout_s: float | None = None,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES,
                 max_connections: int = 16):
        if not frame_timeout_s > 0 or (idle_timeout_s is not None and not idle_timeout_s > 0):
            raise ValueError(f"PolicyServer: timeouts must be > 0 s, got frame {frame_timeout_s}, idle "
                             f"{idle_timeout_s}")
        if max_connections < 1:
            raise ValueError(f"PolicyServer: max_connections must be >= 1, got {max_connections}")
        self.service = service
        self.frame_timeout_s, self.idle_timeout_s = float(frame_timeout_s), idle_timeout_s
        self.max_header_bytes, self.max_body_bytes = int(max_header_bytes), int(max_body_bytes)
        self.max_connections = int(max_connections)
        self._sock = sock if sock is not None else listen(host, port)
        self._sock.settimeout(0.2)  # accept() wakes up to notice stop()
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accept_thread: threading.Thread | None = None
        self.dropped: list[str] = []  # why each misbehaving peer was dropped (newest last, at most 100)

    @classmethod
    def from_checkpoint(cls, checkpoint, host: str = "127.0.0.1", port: int = 0, *, device: str = "cpu",
                        default_task: str | None = None, **kwargs) -> PolicyServer:
        """Bind first (a busy port fails at once), then load `checkpoint` onto `device` (e.g. "cuda") and warm it
        up (port 0: a free one). default_task: see PolicyService; kwargs: the limits and timeouts of PolicyServer."""
        from robopolicy.policies.policy import load_policy

        sock = listen(host, port)
        try:
            service = PolicyService(load_policy(checkpoint, map_location=device), default_task=default_task)
            service.warmup()
        except BaseException:
            sock.close()
            raise
        return cls(service, sock=sock, **kwargs)

    def start(self) -> tuple[str, int]:
        """Accept connections in a background thread; returns (host, port)."""
        self._accept_thread = threading.Thread(target=self.serve_forever, name="policy-server", daemon=True)
        self._accept_thread.start()
        return self.address

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set() or self._sock.fileno() < 0:
                    break
                log.warning("policy server: accept failed (%s); retrying", exc)  # e.g. out of file descriptors
                time.sleep(0.1)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                self._drop(conn, peer, f"server busy: {self.max_connections} connections already open; retry later",
                           "ServerBusy")
                conn.close()
                continue
            t = threading.Thread(target=self._serve, args=(conn, peer), name="policy-server-conn", daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _drop(self, conn: socket.socket, peer, message: str, kind: str) -> None:
        """Tell a misbehaving peer why it is dropped (best effort, about 1 s at most) and log one line. Unread
        bytes are drained briefly (at most LINGER_BYTES / LINGER_S) so that closing does not reset the
        connection before the peer has read the error frame."""
        self.dropped = [*self.dropped[-99:], f"{peer}: {message}"]
        log.warning("policy server: dropping %s: %s", peer, message)
        with contextlib.suppress(OSError, ProtocolError):
            send_message(conn, _error(f"{kind}: {message}", kind), timeout=1.0)
            conn.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + LINGER_S, 0
            while drained < LINGER_BYTES and (remaining := deadline - time.monotonic()) > 0:
                conn.settimeout(remaining)
                data = conn.recv(RECV_CHUNK_BYTES)
                if not data:
                    break
                drained += len(data)

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            while not self._stop.is_set():
                try:
                    request = recv_message(conn, first_byte_timeout=self.idle_timeout_s, timeout=self.frame_timeout_s,
                                           max_header_bytes=self.max_header_bytes, max_body_bytes=self.max_body_bytes)
                except ProtocolError as exc:  # also FrameTimeout: the stream is out of step, say why and drop it
                    self._drop(conn, peer, str(exc), type(exc).__name__)
                    return
                send_message(conn, self._answer(request), timeout=self.frame_timeout_s)
        except (ConnectionError, OSError, ProtocolError):
            return  # the peer went away, or stopped reading our reply
        except Exception as exc:  # a fault in the service: one line, never a traceback; the others keep running
            log.warning("policy server: connection %s ended by %s: %s", peer, type(exc).__name__, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, request: Message) -> Message:
        """The service's reply, or an error reply if the service raised or the reply cannot be encoded."""
        request_id = request.meta.get("id")
        try:
            reply = self.service.handle(request)
            encode(reply)  # cannot go on the wire (dtype, size): say so instead of breaking the connection
            return reply
        except Exception as exc:
            return _error(f"{type(exc).__name__}: {exc}", type(exc).__name__, request_id)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in [self._accept_thread, *threads]:
            if t is not None and t is not threading.current_thread():
                t.join(timeout=2.0)

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robopolicy.runtime.policy_server", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint or training run directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (no authentication: trusted networks)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device for the policy (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        server = PolicyServer.from_checkpoint(args.checkpoint, args.host, args.port, device=args.device)
    except (RemotePolicyError, FileNotFoundError, ValueError) as exc:  # bad address / checkpoint: one line
        print(f"policy_server: error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {args.checkpoint} on {server.address[0]}:{server.address[1]} ({args.device})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def as_arrays(obs: Mapping[str, object]) -> dict[str, np.ndarray]:
    """{key: window} -> {"obs:<key>": array} as a predict request carries them."""
    return {f"obs:{k}": _wire_array(v) for k, v in obs.items()}


if __name__ == "__main__":
    raise SystemExit(main())
