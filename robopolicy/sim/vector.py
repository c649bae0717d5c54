"""Several environments stepped together, in worker processes or in this process.

Both classes take lists of env indices, so finished environments are simply not stepped, and return one
result per requested env, in order:
  reset(indices, seeds, videos) -> [(obs, info, frame or None)]
  step(indices, actions, videos) -> [(obs, reward, terminated, truncated, info, frame or None)]
A frame is rendered after the reset / step when that env's `videos` flag is set.

Workers are forked on Linux (like gymnasium's AsyncVectorEnv: fast, and a user script without an
`if __name__ == "__main__":` guard is not re-imported); elsewhere they are spawned. Workers never run torch,
so the parent's thread pools do not matter. An exception inside a worker is re-raised here as `EnvWorkerError`
with the worker's traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from robopolicy.sim.envs import EnvSpec

WORKER_TIMEOUT_S = 600.0  # longest a worker may take for one reset or step before we give up on it
# Not "fork": a process that has rendered (EGL / Mesa llvmpipe threads) or runs other threads cannot be forked
# safely; a forked robosuite worker then deadlocks creating its render context. forkserver starts workers from
# a clean single-threaded server process (POSIX), spawn elsewhere.
DEFAULT_START_METHOD = "forkserver" if sys.platform != "win32" else "spawn"


class EnvWorkerError(RuntimeError):
    """An environment failed inside a worker process."""


def _reset(env, seed: int | None, video: bool):
    obs, info = env.reset(seed=seed, options={"video": True} if video else None)
    return obs, info, env.render() if video else None


def _step(env, action, video: bool):
    obs, reward, terminated, truncated, info = env.step(action)
    return obs, reward, terminated, truncated, info, env.render() if video else None


def _worker(conn, spec: EnvSpec) -> None:
    try:
        env = spec.make()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    conn.send(("ok", None))
    try:
        while True:
            cmd, args = conn.recv()
            try:
                if cmd == "reset":
                    conn.send(("ok", _reset(env, *args)))
                elif cmd == "step":
                    conn.send(("ok", _step(env, *args)))
                elif cmd == "close":
                    env.close()
                    conn.send(("ok", None))
                    return
                else:
                    conn.send(("error", f"unknown command {cmd!r}"))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


class InProcessVectorEnv:
    """n environments in this process (the fallback, and the n = 1 case)."""

    def __init__(self, spec: EnvSpec, n: int):
        self.spec = spec
        self.envs = [spec.make() for _ in range(n)]
        self.n_processes = 1

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, indices: Sequence[int], seeds: Sequence[int | None], videos: Sequence[bool]) -> list[tuple]:
        return [_reset(self.envs[i], s, v) for i, s, v in zip(indices, seeds, videos)]

    def step(self, indices: Sequence[int], actions: Sequence[Any], videos: Sequence[bool]) -> list[tuple]:
        return [_step(self.envs[i], a, v) for i, a, v in zip(indices, actions, videos)]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


class ProcessVectorEnv:
    """n environments, one per worker process."""

    def __init__(
        self, spec: EnvSpec, n: int, timeout_s: float = WORKER_TIMEOUT_S, start_method: str = DEFAULT_START_METHOD
    ):
        self.spec = spec
        self.timeout_s = timeout_s
        ctx = mp.get_context(start_method)
        self._conns, self._procs = [], []
        try:
            for i in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, spec), name=f"robopolicy-env-{i}", daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for i in range(n):
                self._receive(i)
        except BaseException:
            self.close()
            raise
        self.n_processes = n

    def __len__(self) -> int:
        return len(self._conns)

    def _receive(self, i: int):
        conn, proc = self._conns[i], self._procs[i]
        waited = 0.0
        while not conn.poll(1.0):
            waited += 1.0
            if not proc.is_alive():
                raise EnvWorkerError(
                    f"env worker {i} ({self.spec.name}) died with exit code {proc.exitcode} without answering"
                )
            if waited >= self.timeout_s:
                raise EnvWorkerError(f"env worker {i} ({self.spec.name}) did not answer within {self.timeout_s:.0f} s")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise EnvWorkerError(
                f"env worker {i} ({self.spec.name}) closed its pipe (exit code {proc.exitcode})"
            ) from None
        if status != "ok":
            raise EnvWorkerError(f"env worker {i} ({self.spec.name}) failed:\n{payload}")
        return payload

    def _call(self, cmd: str, indices: Sequence[int], args: Sequence[tuple]) -> list:
        for i, a in zip(indices, args):
            self._conns[i].send((cmd, a))
        return [self._receive(i) for i in indices]

    def reset(self, indices: Sequence[int], seeds: Sequence[int | None], videos: Sequence[bool]) -> list[tuple]:
        return self._call("reset", indices, list(zip(seeds, videos)))

    def step(self, indices: Sequence[int], actions: Sequence[Any], videos: Sequence[bool]) -> list[tuple]:
        return self._call("step", indices, list(zip(actions, videos)))

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs):
            try:
                if proc.is_alive():
                    conn.send(("close", None))
                    if conn.poll(10.0):
                        conn.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
            conn.close()
        self._conns, self._procs = [], []


def make_vector_env(spec: EnvSpec, n_envs: int) -> InProcessVectorEnv | ProcessVectorEnv:
    """`n_envs` environments: worker processes when n_envs > 1, falling back to this process (with a warning)
    if processes cannot be started; errors raised by the environment itself are not swallowed."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if n_envs == 1:
        return InProcessVectorEnv(spec, 1)
    try:
        return ProcessVectorEnv(spec, n_envs)
    except EnvWorkerError:
        raise
    except (OSError, RuntimeError, ImportError) as e:  # no /dev/shm, no semaphores, unpicklable main module, ...
        warnings.warn(f"cannot start {n_envs} env worker processes ({e}); running them in this process", stacklevel=2)
        return InProcessVectorEnv(spec, n_envs)
