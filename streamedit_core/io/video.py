"""Video files in and out through PyAV (FFmpeg), streamed: never the whole video in memory.

Frames are ComfyUI's `IMAGE` layout: chunks `[T, H, W, 3]`, float32 in `[0, 1]` (torch tensors).

    reader = VideoReader("in.mp4", chunk_frames=16)
    with VideoWriter("out.mp4", reader.fps, reader.width, reader.height) as writer:
        for chunk in reader:
            writer.write(edit(chunk))

The frame rate stays an exact rational (`fractions.Fraction`, e.g. 24000/1001), so a video
written back has the source's timing. The writer encodes to a hidden temporary file in the
target's folder and renames it onto the target only when the `with` block ends without an
exception: an interrupted or failed write leaves no partial file and an existing target untouched.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from .files import discard, publish, temp_file

log = logging.getLogger(__name__)

# encoders that take a constant-rate-factor quality setting
_CRF_CODECS = ("libx264", "libx265", "libvpx-vp9")
# pixel formats with chroma subsampled 2x in both directions (need even sizes)
_SUBSAMPLED_420 = ("yuv420p", "yuvj420p", "nv12")


def _x264_options() -> dict[str, str]:
    """x264's AVX-512 code gives different files from run to run for the same frames
    (docs/development.md); capped at AVX2 (which such a CPU has), the same frames give the
    same file."""
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        avx512 = False
    return {"x264-params": "asm=AVX2"} if avx512 else {}


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as e:
        raise ValueError(f"{str(path)!r} is not a readable video file ({e})") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{str(path)!r} has no video stream")
    return container


class VideoReader:
    """Iterate the frames of a video file in chunks `[T, H, W, 3]`, float32 in `[0, 1]`.

    Every chunk has `chunk_frames` frames except possibly the last. Each iteration opens the file
    anew, so a reader can be iterated more than once; only one chunk is held at a time.

    Attributes: `fps` (`Fraction`, exact), `width`, `height`, `num_frames`. `num_frames` comes
    from the container's header when it has a frame count (mp4, mov), else it is estimated from
    the duration and the frame rate (0 if neither is known): use it for progress bars, not as a
    promise; iteration yields however many frames the file really holds.
    """

    def __init__(self, path: str | os.PathLike, chunk_frames: int = 16) -> None:
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
        self.path = Path(path)
        self.chunk_frames = chunk_frames
        container = _open_input(self.path)
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise ValueError(f"{str(self.path)!r}: the video stream has no frame rate")
            self.fps = Fraction(rate)
            self.width = stream.codec_context.width
            self.height = stream.codec_context.height
            if self.width <= 0 or self.height <= 0:
                raise ValueError(f"{str(self.path)!r}: the video stream has no frame size")
            self.num_frames = self._count_frames(stream, container)
        finally:
            container.close()

    def _count_frames(self, stream, container) -> int:
        if stream.frames:
            return int(stream.frames)
        if stream.duration is not None and stream.time_base is not None:
            seconds = stream.duration * stream.time_base
        elif container.duration is not None:
            seconds = Fraction(container.duration, av.time_base)
        else:
            return 0
        return round(seconds * self.fps)

    def __repr__(self) -> str:
        return (f"VideoReader({str(self.path)!r}, {self.width}x{self.height}, fps={self.fps}, "
                f"~{self.num_frames} frames)")

    def __iter__(self) -> Iterator[Tensor]:
        container = _open_input(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threading in the decoder
            buf: list[np.ndarray] = []
            try:
                for frame in container.decode(stream):
                    # scale to the first frame's size in case the stream changes resolution
                    buf.append(frame.to_ndarray(format="rgb24", width=self.width,
                                                height=self.height))  # [H, W, 3] uint8
                    if len(buf) == self.chunk_frames:
                        yield _to_float(buf)
                        buf = []
            except av.error.FFmpegError as e:
                raise ValueError(f"{str(self.path)!r}: failed to decode video ({e})") from e
            if buf:
                yield _to_float(buf)
        finally:
            container.close()


class ChunkReader:
    """Chunk `chunk_index` of a file, with its decoder left open between calls: when chunks are
    asked for in order (one queued job per chunk), each costs one chunk of decoding, not all
    those before it. A repeat, a jump back or a changed file (its mtime) decodes from the
    start again. Holds up to `max_open` files open, the least recently used closed first."""

    def __init__(self, max_open: int = 4) -> None:
        self.max_open = max_open
        self._open: dict[tuple[str, int], _Cursor] = {}  # (path, chunk_frames) -> cursor, oldest first

    def read(self, path: str | os.PathLike, chunk_index: int, chunk_frames: int) -> tuple[Tensor, Fraction]:
        """(chunk [T, H, W, 3] float, the file's fps); ValueError naming the file past its end."""
        path = os.fspath(path)
        key = (path, chunk_frames)
        cursor = self._open.pop(key, None)
        if cursor is not None and (cursor.next_index > chunk_index or cursor.mtime != os.stat(path).st_mtime_ns):
            cursor.close()
            cursor = None
        cursor = cursor or _Cursor(path, chunk_frames)
        try:
            while True:
                chunk = next(cursor.chunks)
                cursor.next_index += 1
                if cursor.next_index - 1 == chunk_index:
                    break
        except StopIteration:
            cursor.close()
            raise ValueError(f"video {Path(path).name!r} has no chunk {chunk_index}: it holds "
                             f"{cursor.next_index} chunks of up to {chunk_frames} frames") from None
        except BaseException:
            cursor.close()
            raise
        self._open[key] = cursor
        while len(self._open) > self.max_open:
            self._open.pop(next(iter(self._open))).close()
        return chunk, cursor.reader.fps

    def close(self) -> None:
        """Close every open file."""
        while self._open:
            self._open.popitem()[1].close()


class _Cursor:
    def __init__(self, path: str, chunk_frames: int) -> None:
        self.mtime = os.stat(path).st_mtime_ns
        self.reader = VideoReader(path, chunk_frames=chunk_frames)
        self.chunks = iter(self.reader)
        self.next_index = 0

    def close(self) -> None:
        self.chunks.close()  # the generator's finally closes the container


def _to_float(frames: list[np.ndarray]) -> Tensor:
    """list of [H, W, 3] uint8 -> [T, H, W, 3] float32 in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).to(torch.float32).div_(255.0)


class VideoWriter:
    """Write chunks of frames to a video file; a context manager.

    `write(chunk)` takes `[T, H, W, 3]` (or one frame `[H, W, 3]`), float in `[0, 1]` or uint8,
    a torch tensor or a numpy array, of the size given here. Encodes into a temporary file beside
    `path`, renamed onto `path` when the `with` block ends normally; on an exception the temporary
    file is deleted and `path` is left as it was. `crf` applies to libx264/libx265/libvpx-vp9
    (lower = better; 18 is visually near lossless for x264).
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float | int, width: int,
                 height: int, codec: str = "libx264", crf: int = 18,
                 pix_fmt: str = "yuv420p") -> None:
        self.path = Path(path)
        folder = self.path.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"output directory does not exist: {str(folder)!r} "
                                    f"(for {str(self.path)!r})")
        if self.path.is_dir():
            raise ValueError(f"output path {str(self.path)!r} is a directory; give a file name")
        if not self.path.suffix:
            raise ValueError(f"output path {str(self.path)!r} needs a file extension (.mp4, .mkv, "
                             "...) to pick the container format")
        for name, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pix_fmt in _SUBSAMPLED_420 and (width % 2 or height % 2):
            raise ValueError(f"{pix_fmt} needs an even width and height, got {width}x{height}; "
                             "crop or pad the frames by one pixel, or use pix_fmt='yuv444p'")
        if codec not in av.codecs_available:
            raise ValueError(f"unknown video codec {codec!r} (not in this FFmpeg build)")
        self.fps = _as_fraction(fps)
        self.width, self.height = width, height
        self.codec, self.crf, self.pix_fmt = codec, crf, pix_fmt
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._tmp: str | None = None

    def __enter__(self) -> "VideoWriter":
        self._tmp = temp_file(self.path)
        try:
            self._container = av.open(self._tmp, mode="w")
            stream = self._container.add_stream(self.codec, rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
            if self.codec in _CRF_CODECS:
                stream.options = {"crf": str(self.crf), **(_x264_options() if self.codec == "libx264" else {})}
            self._stream = stream
        except (av.error.FFmpegError, ValueError) as e:
            self._abort()
            raise ValueError(f"cannot write {str(self.path)!r} with codec {self.codec!r}, "
                             f"pix_fmt {self.pix_fmt!r} ({e})") from e
        except BaseException:
            self._abort()
            raise
        return self

    def write(self, frames: Tensor | np.ndarray) -> None:
        if self._container is None:
            raise RuntimeError("VideoWriter.write() outside its `with` block")
        arr = self._to_uint8(frames)  # [T, H, W, 3] uint8
        for img in arr:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        self.frames_written += len(arr)

    def _to_uint8(self, frames: Tensor | np.ndarray) -> np.ndarray:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if not isinstance(frames, Tensor):
            raise TypeError(f"frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
        if frames.dim() == 3:
            frames = frames.unsqueeze(0)
        expected = (self.height, self.width, 3)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must be [T, {self.height}, {self.width}, 3] (the writer's "
                             f"height, width), got {tuple(frames.shape)}")
        frames = frames.detach().cpu()
        if frames.dtype == torch.uint8:
            return np.ascontiguousarray(frames.numpy())
        if not frames.is_floating_point():
            raise TypeError(f"frames must be float in [0, 1] or uint8, got {frames.dtype}")
        if not bool(torch.isfinite(frames).all()):
            raise ValueError("frames contain NaN or Inf")
        return np.ascontiguousarray(
            (frames.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy())

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            for packet in self._stream.encode(None):  # flush the encoder
                self._container.mux(packet)
            self._container.close()
            self._container = None
        except BaseException:
            self._abort()
            raise
        if self.frames_written == 0:
            self._abort()
            raise ValueError(f"no frames were written to {str(self.path)!r}; nothing saved")
        tmp, self._tmp = self._tmp, None
        publish(tmp, self.path)  # deletes the temporary file if the rename fails
        log.info("wrote %d frames to %s", self.frames_written, self.path)

    def _abort(self) -> None:
        """Close without finishing and delete the temporary file; never raises."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception as e:  # the write already failed; keep that error, not this one
                log.debug("closing an aborted video container failed: %s", e)
            self._container = None
        discard(self._tmp)
        self._tmp = None


def _as_fraction(fps: Fraction | float | int) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (Fraction, int, float)):
        raise TypeError(f"fps must be a Fraction, int or float, got {type(fps).__name__}")
    if not (fps > 0 and np.isfinite(float(fps))):
        raise ValueError(f"fps must be positive and finite, got {fps!r}")
    # floats such as 29.97 become a small exact ratio (2997/100), ints and Fractions stay exact
    return Fraction(fps).limit_denominator(100_000)
