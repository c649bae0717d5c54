"""Video encoding with PyAV for the LeRobot v3 writer: one mp4 per episode, then appended to a shared file.

Codec choice ("auto"): AV1 via libsvtav1 (LeRobot's default) when the local PyAV/FFmpeg build has it,
else H.264 (libx264, then any h264 encoder), else MPEG-4 part 2. Frames are RGB uint8 (H, W, 3) converted
to `pix_fmt` (yuv420p: even width and height). Every frame of an episode has pts = frame index / fps, and a
keyframe every `g` frames (g=2 as LeRobot). B-frames are disabled so packets concatenate by timestamp.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# SVT-AV1 prints a banner per encoder on stderr unless told to log errors only.
os.environ.setdefault("SVT_LOG", "1")

AUTO_CODECS = ("libsvtav1", "libx264", "h264", "mpeg4")


@dataclass(frozen=True)
class VideoOptions:
    """Encoder settings. crf/preset None = the codec's default below (LeRobot's for AV1)."""

    codec: str = "auto"
    pix_fmt: str = "yuv420p"
    g: int = 2
    crf: int | None = None
    preset: int | str | None = None

    def encoder_options(self, codec: str) -> dict[str, str]:
        """FFmpeg options for `codec` (an encoder name)."""
        opts = {"g": str(self.g), "bf": "0"}
        if codec == "libsvtav1":
            opts["crf"] = str(30 if self.crf is None else self.crf)
            opts["preset"] = str(12 if self.preset is None else self.preset)
        elif codec in ("libx264", "libx265"):
            opts["crf"] = str(18 if self.crf is None else self.crf)
            opts["preset"] = str("medium" if self.preset is None else self.preset)
        elif codec == "mpeg4":
            opts["qscale"] = str(2 if self.crf is None else self.crf)
        elif self.crf is not None:
            opts["crf"] = str(self.crf)
        return opts


def available_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def choose_codec(options: VideoOptions, width: int, height: int) -> str:
    """Encoder name for `options.codec` ("auto" tries AUTO_CODECS in order and keeps the first that opens)."""
    candidates = AUTO_CODECS if options.codec == "auto" else (options.codec,)
    errors = []
    for name in candidates:
        if not available_encoder(name):
            errors.append(f"{name}: not in this PyAV/FFmpeg build")
            continue
        try:
            _open_encoder(name, options, width, height, Fraction(10))
        except Exception as e:
            errors.append(f"{name}: {e}")
            continue
        return name
    raise RuntimeError(
        f"no usable video encoder for {width}x{height} {options.pix_fmt} ({'; '.join(errors)}); "
        "install a PyAV build with libsvtav1 or libx264, or store images losslessly (video=False)"
    )


def _realtime_threads() -> dict[int, tuple[int, int]]:
    """{native thread id: (policy, priority)} of this process's threads in a real-time class (Linux; else {})."""
    if not hasattr(os, "sched_getscheduler") or not os.path.isdir("/proc/self/task"):
        return {}
    out = {}
    for name in os.listdir("/proc/self/task"):
        try:
            policy = os.sched_getscheduler(int(name))
            if policy in (os.SCHED_FIFO, os.SCHED_RR):
                out[int(name)] = (policy, os.sched_getparam(int(name)).sched_priority)
        except OSError:  # the thread exited meanwhile
            pass
    return out


def demote_encoder_threads(before: dict[int, tuple[int, int]]) -> int:
    """Undo what an encoder did to this process's scheduling: real-time threads not in `before` go back to
    normal scheduling at the calling thread's nice value, those in it to their class and priority there; returns
    how many threads changed. libsvtav1 (LeRobot's AV1 encoder) moves the thread that opens it and every thread
    it starts to SCHED_FIFO priority 99 when the process runs as root, which on a robot computer starves the
    control loop, the cameras and the servo bus."""
    moved = 0
    nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if hasattr(os, "getpriority") else 0
    for tid, now in _realtime_threads().items():
        try:
            if tid not in before:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            elif before[tid] != now:
                os.sched_setscheduler(tid, before[tid][0], os.sched_param(before[tid][1]))
            else:
                continue
            moved += 1
        except OSError:
            pass
    return moved


def _open_encoder(codec: str, options: VideoOptions, width: int, height: int, rate: Fraction):
    before = _realtime_threads()
    ctx = av.codec.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, options.pix_fmt
    ctx.time_base = 1 / rate
    ctx.framerate = rate
    ctx.options = options.encoder_options(codec)
    try:
        ctx.open()
    finally:
        demote_encoder_threads(before)
    return ctx


def fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _encode_once(frames: np.ndarray, path: Path, fps: float, codec: str, options: VideoOptions) -> None:
    """Write uint8 RGB frames (N, H, W, 3) to a new mp4 at `path`; frame i has pts i / fps."""
    n, h, w, c = frames.shape
    if c != 3:
        raise ValueError(f"{path}: video frames must be RGB (H, W, 3), got {c} channels")
    if options.pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(
            f"{path}: yuv420p video needs even width and height, got {w}x{h}; "
            "use pix_fmt='yuv444p' or store images losslessly (video=False)"
        )
    rate = fps_fraction(fps)
    before = _realtime_threads()
    try:
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate, options=options.encoder_options(codec))
            stream.width, stream.height, stream.pix_fmt = w, h, options.pix_fmt
            stream.codec_context.time_base = 1 / rate
            muxed: list[tuple[int | None, int | None]] = []  # (pts, dts) of the packets written so far
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    _mux(container, packet, path, muxed)
                if i == 0:  # the encoder opened with the first frame and started its threads
                    demote_encoder_threads(before)
            for packet in stream.encode():
                _mux(container, packet, path, muxed)
    finally:
        demote_encoder_threads(before)


class MuxError(RuntimeError):
    """The muxer refused a packet the encoder produced (seen once in CI: libsvtav1, EINVAL on a long episode)."""


def _mux(container, packet, path: Path, muxed: list) -> None:
    stamp = (packet.pts, packet.dts)  # in the encoder's time base (1 / fps); mux rescales the packet in place
    try:
        container.mux(packet)
    except av.FFmpegError as e:
        last = muxed[-1] if muxed else None
        raise MuxError(
            f"{path}: the mp4 muxer refused packet {len(muxed)} (pts {stamp[0]}, dts {stamp[1]} in 1/fps; the "
            f"previous packet had {last}): {e}"
        ) from e
    muxed.append(stamp)


ENCODE_ATTEMPTS = 3


def attempt_path(path: Path, attempt: int) -> Path:
    """The file encode_video writes attempt `attempt` of `path` into (before `scratch` maps it)."""
    return path.with_name(f"{path.stem}.attempt{attempt}{path.suffix}")


def encode_video(
    frames: np.ndarray,
    path: Path,
    fps: float,
    codec: str,
    options: VideoOptions,
    *,
    attempts: int = ENCODE_ATTEMPTS,
    timeout_s: float | None = None,
    scratch: Callable[[Path], Path] | None = None,
) -> None:
    """Write uint8 RGB frames (N, H, W, 3) to a new mp4 at `path`; frame i has pts i / fps.

    scratch: maps the name wanted for an attempt's file to the path to use (a writer passes its journal's
    `temp_path`, so attempt files are recorded and removed on rollback).

    The encoder runs under a watchdog: libsvtav1 3.x occasionally deadlocks inside send_picture (seen here once
    in ~150 episodes; upstream SVT-AV1 issues 2300/2311). A stuck attempt is abandoned (its thread idles) and the
    episode is encoded again into a fresh file; so is an attempt whose packets the muxer refused (MuxError, seen
    once in CI and not reproduced in 32 encodes of the same frames). After `attempts` failed attempts the error
    names the file and what went wrong each time.
    """
    n, h, w = frames.shape[:3]
    if timeout_s is None:
        timeout_s = 60.0 + n * max(1.0, h * w / (640 * 480)) * 0.5
    abandoned: list[Path] = []
    failures: list[str] = []
    for attempt in range(attempts):
        # every attempt writes its own file, so a stuck encoder that wakes up later cannot clobber the result
        target = attempt_path(path, attempt)
        target = scratch(target) if scratch is not None else target
        errors: list[BaseException] = []  # this attempt's own: an abandoned thread may still fail later
        worker = threading.Thread(
            target=_run_capturing, args=(errors, _encode_once, frames, target, fps, codec, options), daemon=True
        )
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            warnings.warn(f"{path}: {codec} encoder stuck for {timeout_s:.0f} s (attempt {attempt + 1}); retrying",
                          stacklevel=2)
            abandoned.append(target)
            failures.append(f"stuck for {timeout_s:.0f} s")
            continue
        if errors:
            error = errors[0]
            if not isinstance(error, MuxError):
                raise error
            warnings.warn(f"{error} (attempt {attempt + 1}); encoding the episode again", stacklevel=2)
            failures.append(str(error))
            target.unlink(missing_ok=True)
            continue
        os.replace(target, path)
        for stuck in abandoned:  # the stuck thread keeps writing into an unlinked file
            stuck.unlink(missing_ok=True)
        return
    raise RuntimeError(
        f"{path}: the {codec} encoder failed {attempts} times ({'; '.join(failures)}); encode with another codec "
        "(VideoOptions(codec='libx264')) or store images losslessly (video=False)"
    )


def _run_capturing(errors: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # re-raised in the calling thread
        errors.append(e)


def append_video(existing: Path | None, keep_s: float, episode: Path, out: Path, episode_duration_s: float) -> None:
    """Write `out` = the first `keep_s` seconds of `existing` (if any) followed by `episode`.

    Packets are copied, not re-encoded; the episode's packets are shifted by `keep_s`. Packets of
    `existing` at or after `keep_s` (left by an interrupted save) are dropped.
    """
    with av.open(str(episode)) as ep_in, av.open(str(out), "w", format="mp4") as dst:
        ep_stream = ep_in.streams.video[0]
        out_stream = dst.add_stream_from_template(ep_stream, opaque=True)
        if existing is not None:
            with av.open(str(existing)) as old_in:
                old_stream = old_in.streams.video[0]
                seconds = float(old_stream.time_base)  # a float: Fraction arithmetic per packet is slow
                for packet in old_in.demux(old_stream):
                    if packet.pts is None or packet.pts * seconds >= keep_s - 1e-9:
                        continue
                    packet.stream = out_stream
                    dst.mux(packet)
        tb = ep_stream.time_base
        offset = round(Fraction(keep_s).limit_denominator(10**6) / tb)
        seconds = float(tb)
        for packet in ep_in.demux(ep_stream):
            if packet.pts is None:
                continue
            if packet.pts * seconds >= episode_duration_s - 1e-9:
                continue
            packet.pts += offset
            packet.dts = packet.pts if packet.dts is None else packet.dts + offset
            packet.stream = out_stream
            dst.mux(packet)


def channels_of(pix_fmt: str) -> int:
    if pix_fmt.startswith(("gray", "y8", "y16")):
        return 1
    if pix_fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbrap")):
        return 4
    return 3


def probe_video(path: Path) -> dict:
    """LeRobot-style `info` of a video file, read from its first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        return {
            "video.height": int(ctx.height),
            "video.width": int(ctx.width),
            "video.codec": ctx.codec.canonical_name if hasattr(ctx.codec, "canonical_name") else ctx.codec.name,
            "video.pix_fmt": ctx.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(rate) if rate is not None and rate.denominator == 1 else float(rate or 0),
            "video.channels": channels_of(ctx.pix_fmt or ""),
            "has_audio": len(container.streams.audio) > 0,
        }


# ----- packet copies: an episode's video taken from another file without decoding it ----------------------


@dataclass(frozen=True)
class PacketSource:
    """An episode's video inside an existing mp4: its `frames` frames lie in [from_s, to_s) seconds of `path`
    (the source's meta/episodes from/to timestamps), frame i at from_s + i / fps. Packets of it are copied,
    not re-encoded, when `packet_problem` finds nothing wrong."""

    path: Path
    from_s: float
    to_s: float
    frames: int
    tolerance_s: float = 1e-4


@dataclass(frozen=True)
class StreamSignature:
    """What a decoder needs to read packets of a video stream: packets of two streams with equal signatures
    can share one file. codec: canonical name (av1, h264, ...); extradata: the codec's out-of-band header."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    extradata: bytes

    @classmethod
    def of(cls, stream) -> StreamSignature:
        ctx = stream.codec_context
        return cls(_canonical(ctx.codec), int(ctx.width), int(ctx.height), str(ctx.pix_fmt),
                   bytes(ctx.extradata or b""))


def _canonical(codec) -> str:
    return getattr(codec, "canonical_name", None) or codec.name


def encoder_codec(encoder: str) -> str:
    """The codec an encoder writes: "libsvtav1" -> "av1", "libx264" -> "h264"."""
    return _canonical(av.codec.Codec(encoder, "w"))


def stream_signature(path: Path) -> StreamSignature:
    with av.open(str(path)) as container:
        return StreamSignature.of(container.streams.video[0])


def _packets_in(container, stream, src: PacketSource) -> list:
    """The packets of `stream` whose time lies in [from_s, to_s) (within tolerance_s), in file order."""
    tb = stream.time_base
    seconds = float(tb)
    lo, hi = src.from_s - src.tolerance_s, src.to_s - src.tolerance_s
    if src.from_s > 0:
        container.seek(max(0, int(lo / tb)), stream=stream, backward=True, any_frame=False)
    out = []
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        t = packet.pts * seconds
        if t >= hi:
            break  # packets in decode order; reordered ones (B-frames) are refused by _packet_problem
        if t >= lo:
            out.append(packet)
    return out


def _packet_problem(packets: list, stream, src: PacketSource, fps: float) -> str | None:
    span = f"[{src.from_s:.4f}, {src.to_s:.4f}) s of {src.path}"
    if len(packets) != src.frames:
        return f"{len(packets)} video packets in {span}, the episode has {src.frames} frames"
    if not packets[0].is_keyframe:
        return f"the episode does not start at a keyframe (the packet at {src.from_s:.4f} s of {src.path} is not one)"
    seconds = float(stream.time_base)
    for i, packet in enumerate(packets):
        if packet.dts is not None and packet.dts != packet.pts:
            return f"packets in {span} are reordered (B-frames: pts {packet.pts} != dts {packet.dts})"
        err = abs(packet.pts * seconds - (src.from_s + i / fps))
        if err > src.tolerance_s:
            return f"frame {i} of the episode is at {packet.pts * seconds:.6f} s, {err:.6f} s off frame_index / fps"
    return None


def packet_problem(src: PacketSource, fps: float, want: StreamSignature | None = None) -> str | None:
    """Why the packets of `src` cannot become an episode's video at `fps` frames/s (None: they can): they must
    be exactly `frames` packets in range, the first a keyframe, in presentation order (no B-frames), frame i at
    from_s + i / fps; and, when `want` is given, of its codec, size and pix_fmt."""
    try:
        with av.open(str(src.path)) as container:
            stream = container.streams.video[0]
            have = StreamSignature.of(stream)
            if want is not None:
                for field in ("codec", "width", "height", "pix_fmt"):
                    if getattr(have, field) != getattr(want, field):
                        return f"{src.path} has {field} {getattr(have, field)}, the output {getattr(want, field)}"
            return _packet_problem(_packets_in(container, stream, src), stream, src, fps)
    except (av.FFmpegError, OSError) as e:
        return f"{src.path}: cannot read its packets ({e})"


def copy_packets(src: PacketSource, out: Path, fps: float) -> None:
    """Write the packets of `src` to a new mp4 `out`, shifted so that its first frame is at 0 (no decoding, no
    encoding: the frames stay bit for bit). ValueError when `packet_problem` would name a problem."""
    with av.open(str(src.path)) as container, av.open(str(out), "w", format="mp4") as dst:
        stream = container.streams.video[0]
        packets = _packets_in(container, stream, src)
        problem = _packet_problem(packets, stream, src, fps)
        if problem is not None:
            raise ValueError(f"cannot copy the episode's video packets: {problem}")
        out_stream = dst.add_stream_from_template(stream, opaque=True)
        shift = packets[0].pts
        for packet in packets:
            packet.pts -= shift
            packet.dts = packet.pts
            packet.stream = out_stream
            dst.mux(packet)
