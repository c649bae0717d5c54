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
Failures -> "error" {meta: {"message", "type"}}; the connection stays usable.

    python -m robopolicy.runtime.policy_server --checkpoint runs/x --host 0.0.0.0 --port 8765
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"RPW1"
PREFIX = struct.Struct("<4sII")
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 30
DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765


class ProtocolError(ValueError):
    """A frame that does not follow the wire format (the message says which part)."""


class RemotePolicyError(RuntimeError):
    """The policy process or server failed to answer a request; the message is the remote error."""


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


def parse_prefix(prefix: bytes) -> tuple[int, int]:
    """(header length, body length) from the 12-byte prefix."""
    if len(prefix) != PREFIX.size:
        raise ProtocolError(f"truncated frame prefix: {len(prefix)} of {PREFIX.size} bytes")
    magic, header_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a robopolicy policy-server peer")
    if header_len > MAX_HEADER_BYTES or body_len > MAX_BODY_BYTES:
        raise ProtocolError(f"frame too large: header {header_len} B, body {body_len} B")
    return header_len, body_len


def decode_parts(header: bytes, body: bytearray | bytes) -> Message:
    try:
        head = json.loads(bytes(header).decode())
        kind, meta, specs = head["kind"], head.get("meta", {}), head.get("arrays", [])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad frame header: {exc}") from exc
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


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"peer closed the connection after {got} of {n} bytes")
        got += k
    return buf


def recv_message(sock: socket.socket) -> Message:
    """Read exactly one frame from a stream socket."""
    header_len, body_len = parse_prefix(bytes(_recv_exact(sock, PREFIX.size)))
    header = _recv_exact(sock, header_len)
    return decode_parts(header, _recv_exact(sock, body_len))


def send_message(sock: socket.socket, message: Message) -> None:
    sock.sendall(encode(message))


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
    """Answers wire requests with a loaded Policy (one request at a time)."""

    def __init__(self, policy):
        self.policy = policy.eval() if hasattr(policy, "eval") else policy
        self.info = policy_info(policy)
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
        obs.update({k: [self._warmup_task()] for k in self.info["language_inputs"]})
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
        out = {k: torch.from_numpy(v) for k, v in obs.items()}
        for key in self.info["language_inputs"]:
            out[key] = request_tasks(request.meta.get("task"), batch)
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
        return Message("chunk", {"inference_s": elapsed, "id": request.meta.get("id")}, {"action": action})


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


class PolicyServer:
    """Serves a PolicyService over TCP, one thread per connection (inference itself is serialized).

    No authentication: bind to 127.0.0.1 (default) or a trusted network only."""

    def __init__(self, service: PolicyService, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.2)  # accept() wakes up to notice stop()
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._accept_thread: threading.Thread | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint, host: str = "127.0.0.1", port: int = 0, *, device: str = "cpu"
                        ) -> PolicyServer:
        """Load `checkpoint` onto `device` (e.g. "cuda"), warm it up and bind (port 0: a free one)."""
        from robopolicy.policies.policy import load_policy

        service = PolicyService(load_policy(checkpoint, map_location=device))
        service.warmup()
        return cls(service, host, port)

    def start(self) -> tuple[str, int]:
        """Accept connections in a background thread; returns (host, port)."""
        self._accept_thread = threading.Thread(target=self.serve_forever, name="policy-server", daemon=True)
        self._accept_thread.start()
        return self.address

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="policy-server-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                try:
                    request = recv_message(conn)
                except ProtocolError as exc:  # the stream is out of sync: say why and drop the connection
                    send_message(conn, Message("error", {"message": f"ProtocolError: {exc}", "type": "ProtocolError"}))
                    return
                send_message(conn, self.service.handle(request))
        except (ConnectionError, OSError):
            return
        finally:
            self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in [self._accept_thread, *self._threads]:
            if t is not None:
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
    server = PolicyServer.from_checkpoint(args.checkpoint, args.host, args.port, device=args.device)
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
