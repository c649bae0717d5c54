"""Frame-accurate random access to video files with PyAV.

`VideoFile` demuxes a file once into a packet index (pts, keyframe flag, byte position and size of every
packet; no decoding) and keeps one open decoder. Frames are numbered 0..num_frames-1 in presentation
order; `times` gives their timestamps in seconds, read from the stream itself (the codec and timing in a
dataset's metadata are not trusted: lerobot_v3_open50 says h264 and holds mpeg4).

Reading frames feeds packets straight from the file (`os.pread`) into the decoder:
- requests are served in presentation order, each frame decoded at most once per call;
- a target close ahead of the decoder's position is reached by decoding forward, otherwise the decoder is
  flushed and restarted at the last keyframe that precedes the target in decode order;
- the decoder state survives between calls, so consecutive reads of nearby frames never re-seek.

Through a non-local `Storage` (streaming, robopolicy.data.storage) the file is a file object whose bytes come
in blocks on demand: the packet index is then taken from the container's own index (the mp4 sample tables,
`Stream.index_entries`) instead of demuxing every packet, so opening reads the headers only and a frame reads
its GOP's bytes. That index has decode timestamps only; it is used when the first packets' demuxed
presentation timestamps equal them (no frame reordering: AV1, and H.264 / MPEG-4 without B-frames, which is
what LeRobot and robopolicy write), else the whole file is demuxed as for a local file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from robopolicy.data.errors import DatasetError, MissingVideoError
from robopolicy.data.storage import LOCAL, Storage

# Output pixel format per channel count of the feature (H, W, C).
_PIXEL_FORMATS = {1: "gray", 3: "rgb24", 4: "rgba"}
# Packets demuxed at open to check that the container index's timestamps are the presentation timestamps.
_INDEX_PROBE_PACKETS = 32


@dataclass(frozen=True)
class DecoderConfig:
    """How video files are decoded.

    threads: codec threads per open file. 1 gives the lowest latency for random access (parallelism comes
      from DataLoader workers); 0 lets FFmpeg choose (best for long sequential reads).
    restart_cost_frames: decoding forward through up to this many extra packets is preferred over flushing
      the decoder and restarting at a keyframe.
    convert_threads: swscale threads for the YUV -> RGB conversion. 0 (FFmpeg's default, auto) spins up a
      thread pool per call, which costs ~14x more than the conversion itself at 96x96 on 2 cores.
    """

    threads: int = 1
    restart_cost_frames: int = 4
    convert_threads: int = 1


class VideoFile:
    """One video stream opened for random access.

    times: float64 (F,) presentation timestamps in seconds, increasing.
    height, width: frame size of the stream; codec: the stream's decoder name (from the file, not metadata).
    storage: where the file is read from (the local disk by default; see the module docstring).
    """

    def __init__(self, path: str | PurePath, config: DecoderConfig = DecoderConfig(), storage: Storage = LOCAL):
        self.path = path if isinstance(path, PurePath) else Path(path)
        self.config = config
        self._storage = storage
        self._fd = -1
        self._reader = None  # file object packets are read from (non-local storage)
        if not storage.is_file(self.path):
            raise MissingVideoError(f"{self.path}: video file not found")
        self._file_size = storage.size(self.path)
        try:
            self._container = av.open(str(self.path) if storage.local else storage.open(self.path), mode="r")
        except DatasetError:
            raise
        except (av.error.FFmpegError, OSError) as e:
            raise MissingVideoError(
                f"{self.path}: cannot open video ({e}); the file is truncated or corrupt — "
                "download or re-encode it"
            ) from e
        try:
            if not self._container.streams.video:
                raise MissingVideoError(f"{self.path}: the file has no video stream")
            self._stream = self._container.streams.video[0]
            self._codec = self._stream.codec_context
            self._codec.thread_count = config.threads
            self.height, self.width = self._codec.height, self._codec.width
            self.codec = self._codec.name
            self._build_index()
        except BaseException:
            self._container.close()
            raise
        if storage.local:
            self._fd = os.open(self.path, os.O_RDONLY)
        else:
            self._reader = storage.open(self.path)
        # A reformatter kept per file reuses its swscale context; frame.to_ndarray(format=...) builds a new
        # one per frame (~1.2 ms at 96x96, vs ~0.07 ms to decode the AV1 frame and ~0.01 ms to convert it with
        # a kept single-threaded context).
        self._reformatter = VideoReformatter()
        self._reset_state()

    # ----- packet index -------------------------------------------------------------------------
    def _build_index(self) -> None:
        index = None if self._storage.local else self._index_from_container()
        if index is None:
            index = self._demux_index()
        pts, dts, keys, pos, size, edges = index
        self._check_and_store_index(pts, dts, keys, pos, size, edges)

    def _index_from_container(self) -> tuple | None:
        """The packet index from the container's own index (no packet read beyond the first few), or None when
        it cannot be trusted to give presentation timestamps (then the file is reopened and demuxed)."""
        entries = list(self._stream.index_entries)
        declared = self._stream.frames
        if not entries or (declared and len(entries) != declared) or any(e.is_discard for e in entries):
            return self._reopen()
        n = min(len(entries), _INDEX_PROBE_PACKETS)
        first = None
        try:
            for i, packet in enumerate(self._container.demux(self._stream)):
                if i >= n or packet.size == 0:
                    break
                e = entries[i]
                if (packet.pts, packet.dts, packet.pos, packet.size, packet.is_keyframe) != (
                    e.timestamp, e.timestamp, e.pos, e.size, e.is_keyframe
                ):
                    return self._reopen()  # frames are reordered (B-frames) or the index is unusual
                first = packet if first is None else first
        except av.error.FFmpegError:
            return self._reopen()  # the demuxer will report it with its own message
        if first is None:
            return self._reopen()
        pts = [e.timestamp for e in entries]
        return (pts, pts, [e.is_keyframe for e in entries], [e.pos for e in entries], [e.size for e in entries],
                ((0, first),))  # fmt: skip

    def _reopen(self) -> None:
        """Close the container and open it again at the file's start (for a full demux); returns None."""
        self._container.close()
        self._container = av.open(self._storage.open(self.path), mode="r")
        self._stream = self._container.streams.video[0]
        self._codec = self._stream.codec_context
        self._codec.thread_count = self.config.threads
        return None

    def _demux_index(self) -> tuple:
        pts, dts, keys, pos, size = [], [], [], [], []
        first = last = None
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                if packet.pts is None:
                    raise MissingVideoError(
                        f"{self.path}: packet {len(pts)} has no timestamp; remux the file to mp4 (ffmpeg -c copy)"
                    )
                pts.append(packet.pts)
                dts.append(packet.pts if packet.dts is None else packet.dts)
                keys.append(packet.is_keyframe)
                pos.append(-1 if packet.pos is None else packet.pos)
                size.append(packet.size)
                first = packet if first is None else first
                last = packet
        except av.error.FFmpegError as e:
            raise MissingVideoError(
                f"{self.path}: demuxing failed after {len(pts)} packets ({e}); the file is truncated or "
                "corrupt — download or re-encode it"
            ) from e
        if not pts:
            raise MissingVideoError(f"{self.path}: the video stream has no frames (truncated or empty file)")
        return pts, dts, keys, pos, size, ((0, first), (len(pts) - 1, last))

    def _check_and_store_index(self, pts, dts, keys, pos, size, edges) -> None:
        """Store the packet index (decode order) after checking it against the file; `edges`: (packet number,
        demuxed packet) pairs whose bytes are compared with the file's to tell whether positions are usable."""
        self._pts = np.asarray(pts, dtype=np.int64)  # decode order
        self._dts = np.asarray(dts, dtype=np.int64)
        self._key = np.asarray(keys, dtype=bool)
        self._pos = np.asarray(pos, dtype=np.int64)
        self._size = np.asarray(size, dtype=np.int64)
        declared = self._stream.frames  # from the container's index (0 when unknown)
        complete = int(np.count_nonzero(self._pos + self._size <= self._file_size))
        if complete < len(pts) or (declared and len(pts) < declared):
            raise MissingVideoError(
                f"{self.path}: truncated — only {complete} of {max(declared, len(pts))} frames are in the file "
                f"({self._file_size} bytes); download or re-encode it"
            )
        if not self._key[0]:
            raise MissingVideoError(f"{self.path}: the stream does not start with a keyframe; re-encode it")
        # Packets are read back from the file by byte range; keep them in memory only when the container
        # gives no usable positions (checked on the first and last packet).
        self._memory: list[bytes] | None = None
        with self._storage.open(self.path) as f:
            for i, packet in edges:
                f.seek(max(int(self._pos[i]), 0))
                if self._pos[i] < 0 or f.read(int(self._size[i])) != bytes(packet):
                    self._container.seek(0, stream=self._stream)
                    self._memory = [bytes(p) for p in self._container.demux(self._stream) if p.size]
                    break
        self._time_base = self._stream.time_base
        order = np.argsort(self._pts, kind="stable")  # presentation order -> decode position
        sorted_pts = self._pts[order]
        if np.any(np.diff(sorted_pts) == 0):
            raise MissingVideoError(f"{self.path}: several frames share one timestamp; remux or re-encode it")
        self._frame_pts = sorted_pts
        self._decode_pos = order
        self.times = sorted_pts.astype(np.float64) * float(self._time_base)
        self._start = self._start_positions()

    def _start_positions(self) -> np.ndarray:
        """Decode position to restart from for each frame (presentation order): the last keyframe at or
        before the frame in decode order whose pts is not after the frame's (open-GOP safe)."""
        key_pos = np.nonzero(self._key)[0]
        dpos = self._decode_pos
        start = key_pos[np.searchsorted(key_pos, dpos, side="right") - 1]
        late = np.nonzero(self._pts[start] > self._frame_pts)[0]
        for f in late:  # leading frames of an open GOP: step back one keyframe at a time
            k = int(np.searchsorted(key_pos, start[f])) - 1
            while k > 0 and self._pts[key_pos[k]] > self._frame_pts[f]:
                k -= 1
            start[f] = key_pos[max(k, 0)]
        return start

    @property
    def num_frames(self) -> int:
        return len(self._frame_pts)

    def nearest(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest frame number to each time `t` (seconds) and its distance |frame time - t| in seconds."""
        t = np.asarray(t, dtype=np.float64)
        right = np.clip(np.searchsorted(self.times, t), 1, max(self.num_frames - 1, 1))
        left = right - 1
        if self.num_frames == 1:
            left = right = np.zeros_like(right)
        pick = np.where(np.abs(self.times[left] - t) <= np.abs(self.times[right] - t), left, right)
        return pick, np.abs(self.times[pick] - t)

    # ----- decoding -----------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._next = 0  # decode position of the next packet to send
        self._last_pts: int | None = None  # pts of the last frame the decoder returned
        self._drained = False

    def _packet(self, i: int) -> av.Packet:
        # av.Packet(size) allocates FFmpeg's zero padding after the data; av.Packet(bytes) would wrap the
        # Python buffer without it and decoders read past its end (seen as garbage mpeg4 frames).
        size = int(self._size[i])
        packet = av.Packet(size)
        if self._memory is not None:
            packet.update(self._memory[i])
        elif self._reader is not None:
            self._reader.seek(int(self._pos[i]))
            if self._reader.readinto(memoryview(packet)) != size:
                raise MissingVideoError(f"{self.path}: short read at byte {int(self._pos[i])}; the file was truncated")
        elif os.preadv(self._fd, [memoryview(packet)], int(self._pos[i])) != size:
            raise MissingVideoError(f"{self.path}: short read at byte {int(self._pos[i])}; the file was truncated")
        packet.pts, packet.dts = int(self._pts[i]), int(self._dts[i])
        packet.time_base = self._time_base
        return packet

    def _restart(self, position: int) -> None:
        self._codec.flush_buffers()
        self._reset_state()
        self._next = position

    def decode(self, frames: np.ndarray, channels: int = 3) -> np.ndarray:
        """uint8 (N, C, H, W) for frame numbers `frames` (any order, repeats allowed)."""
        frames = np.asarray(frames, dtype=np.int64)
        if frames.size and (frames.min() < 0 or frames.max() >= self.num_frames):
            raise IndexError(f"{self.path}: frame number out of range [0, {self.num_frames})")
        pix_fmt = _PIXEL_FORMATS.get(channels)
        if pix_fmt is None:
            raise ValueError(f"{self.path}: cannot decode to {channels} channels (supported: 1, 3, 4)")
        unique, inverse = np.unique(frames, return_inverse=True)
        out = np.empty((len(unique), channels, self.height, self.width), dtype=np.uint8)
        slot = {int(self._frame_pts[f]): j for j, f in enumerate(unique)}
        done = np.zeros(len(unique), dtype=bool)
        try:
            for j, f in enumerate(unique):
                if not done[j]:
                    self._decode_until(int(f), slot, out, done, pix_fmt)
        except av.error.FFmpegError as e:
            self._restart(0)
            raise DatasetError(f"{self.path}: decoding failed ({e}); the file is corrupt — re-encode it") from e
        return out[inverse]

    def _decode_until(self, f: int, slot: dict, out: np.ndarray, done: np.ndarray, pix_fmt: str) -> None:
        target_pts = int(self._frame_pts[f])
        start = int(self._start[f])
        target_pos = int(self._decode_pos[f])
        ahead = self._last_pts is None or self._last_pts < target_pts
        cheap = self._next >= start or start - self._next <= self.config.restart_cost_frames
        if self._drained or not ahead or not cheap:
            self._restart(start)
        j = slot[target_pts]
        while not done[j]:
            if self._next < len(self._pts):
                packet = self._packet(self._next)
                self._next += 1
            elif not self._drained:
                packet, self._drained = None, True
            else:
                raise DatasetError(
                    f"{self.path}: the decoder never produced frame {f} (t={self.times[f]:.6f} s, packet "
                    f"{target_pos}); the stream is corrupt — re-encode it"
                )
            for frame in self._codec.decode(packet):
                self._last_pts = frame.pts
                k = slot.get(frame.pts)
                if k is None or done[k]:
                    continue
                if frame.is_corrupt:
                    raise DatasetError(
                        f"{self.path}: frame at t={float(frame.pts * self._time_base):.6f} s decodes "
                        "with errors; the file is corrupt — re-encode it"
                    )
                rgb = self._reformatter.reformat(frame, format=pix_fmt, threads=self.config.convert_threads)
                rgb = rgb.to_ndarray()
                out[k] = rgb[None] if rgb.ndim == 2 else rgb.transpose(2, 0, 1)
                done[k] = True

    def decode_all(self, channels: int = 3) -> np.ndarray:
        """Every frame, uint8 (F, C, H, W), decoded sequentially."""
        return self.decode(np.arange(self.num_frames), channels)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoFile({str(self.path)!r}, codec={self._codec.name}, frames={self.num_frames}, "
            f"size={self.width}x{self.height})"
        )


def decode_png(data: bytes, channels: int = 3, where: str = "") -> np.ndarray:
    """uint8 (C, H, W) from PNG (or any single-image codec FFmpeg detects from the bytes) — for LeRobot
    `image` features, which store encoded frames in the parquet."""
    pix_fmt = _PIXEL_FORMATS.get(channels)
    if pix_fmt is None:
        raise ValueError(f"{where}: cannot decode an image to {channels} channels (supported: 1, 3, 4)")
    codec = av.CodecContext.create("png", "r")
    try:
        frames = list(codec.decode(av.Packet(data))) + list(codec.decode(None))
    except av.error.FFmpegError as e:
        raise DatasetError(f"{where}: image bytes are not a readable PNG ({e})") from e
    if not frames:
        raise DatasetError(f"{where}: image bytes are not a readable PNG (no picture decoded)")
    rgb = frames[0].to_ndarray(format=pix_fmt)
    return rgb[None] if rgb.ndim == 2 else rgb.transpose(2, 0, 1)
