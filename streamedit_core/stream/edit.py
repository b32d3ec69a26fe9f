"""Whole clips and whole files through one `StreamEditor`: what the CLI's `edit`, the Edit Video
node, eval and the refiner's training data call.

A file is edited at a *working size* (`size`): its own by default, or smaller (frames scaled as
they are decoded, the edited frames scaled back to the file's size before they are written), so
a large video can be edited at a size the machine handles. Progress counts every forward the edit
makes, the flush of the frames still in flight included (`edit_steps`); a size that will be slow
is warned about up front with an estimate (`estimate_seconds`).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import PRESETS, ModelConfig
from .editor import StreamEditor, check_frame_size
from .schedule import PromptSchedule

log = logging.getLogger(__name__)

# Warn before an edit estimated to take longer than this (seconds).
SLOW_EDIT_SECONDS = 120.0
# Seconds per frame (one forward / 4, the flush's forwards counted) of the shipped demo model
# on the CPU: a * megapixels ** b, fitted to 128 x 128 ... 1280 x 720 on a 2-core Xeon (within
# 20 %; docs/development.md, Limits). Other models scale by their parameter count; other CPUs
# differ (the estimate says "about").
CPU_SECONDS_PER_FRAME = (3.6, 1.13)
# Working sizes offered when a size is slow (the longer side, in pixels).
SUGGESTED_SIDES = (1280, 1024, 768, 640, 512, 384, 256, 128)


def edit_clip(model, text_encoder, frames: Tensor, prompt: str | PromptSchedule, *, seed: int = 0,
              steps: int | None = None, window_min: int | None = None,
              window_max: int | None = None) -> Tensor:
    """The editor's output for a whole clip [T, H, W, 3] (fed at once, then flushed: the output
    does not depend on chunking): [T, H, W, 3] float32 on the CPU."""
    editor = StreamEditor(model, text_encoder, prompt, seed=seed, steps=steps, window_min=window_min,
                          window_max=window_max)
    return torch.cat([editor.feed(frames), editor.flush()])


# --- working size ----------------------------------------------------------------------------
def parse_size(text: str | int | None) -> int | tuple[int, int] | None:
    """A working size as a user gives it: None/0/"" = the video's own; "640" = the longer side in
    pixels; "640x360" = width x height. ValueError naming the text otherwise."""
    if text is None or text == 0 or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must be >= 0 (0 = the video's own size), got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if not m or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
        raise ValueError(f"size {text!r} is not a working size: give the longer side in pixels (e.g. 640) "
                         "or width x height (e.g. 640x360)")
    return int(m.group(1)) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))


def working_size(width: int, height: int, size: int | tuple[int, int] | None,
                 stride: int = 8) -> tuple[int, int]:
    """(width, height) to edit a width x height video at: its own (size None), `size` as the
    longer side with the aspect ratio kept, or `size` = (width, height); both rounded to the
    nearest multiple of `stride` (at least one stride)."""
    if size is None:
        return width, height
    if isinstance(size, tuple):
        w, h = size
    else:
        scale = size / max(width, height)
        w, h = width * scale, height * scale
    return (max(stride, math.floor(w / stride + 0.5) * stride), max(stride, math.floor(h / stride + 0.5) * stride))


def _resize(frames: Tensor, width: int, height: int) -> Tensor:
    """frames [T, h, w, 3] float in [0, 1] -> [T, height, width, 3] (bicubic, clamped)."""
    if frames.shape[0] == 0 or tuple(frames.shape[1:3]) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2)  # [T, 3, h, w]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return x.clamp_(0.0, 1.0).permute(0, 2, 3, 1)


# --- how long an edit takes ------------------------------------------------------------------
def edit_steps(frames: int, steps: int, temporal_stride: int = 4) -> int:
    """Forwards an edit of `frames` video frames makes: one per latent frame (4 video frames, the
    last padded), then steps - 1 to flush the latent frames still in flight."""
    return 0 if frames <= 0 else math.ceil(frames / temporal_stride) + steps - 1


def estimate_seconds(config: ModelConfig, width: int, height: int, frames: int,
                     device: torch.device | str) -> float | None:
    """About how long editing `frames` frames of width x height takes with this model on
    `device`; None where there is no measurement to go by (GPUs)."""
    if torch.device(device).type != "cpu":
        return None
    a, b = CPU_SECONDS_PER_FRAME
    per_frame = a * (width * height / 1e6) ** b * _relative_cost(config)
    return per_frame * config.temporal_stride * edit_steps(frames, config.sampler.steps, config.temporal_stride)


@functools.lru_cache(maxsize=8)
def _relative_cost(config: ModelConfig) -> float:
    """The model's parameters relative to the demo preset's (what CPU_SECONDS_PER_FRAME measured)."""
    from ..model.streamedit import count_parameters

    return count_parameters(config)["total"] / count_parameters(PRESETS["demo"])["total"]


def slow_size_warning(config: ModelConfig, width: int, height: int, frames: int,
                      device: torch.device | str, size: Any = None) -> str | None:
    """A warning for an edit estimated to take more than SLOW_EDIT_SECONDS, with the estimate and a
    working size that would be quicker; None for a quick one."""
    seconds = estimate_seconds(config, width, height, frames, device)
    if seconds is None or seconds <= SLOW_EDIT_SECONDS:
        return None
    text = (f"editing {frames} frames at {width} x {height} will take about {_duration(seconds)} on this "
            f"CPU (~{seconds / max(frames, 1):.1f} s a frame)")
    for side in SUGGESTED_SIDES:
        if side >= max(width, height):
            continue
        w, h = working_size(width, height, side, config.spatial_stride)
        quick = estimate_seconds(config, w, h, frames, device)
        if quick <= SLOW_EDIT_SECONDS or side == SUGGESTED_SIDES[-1]:
            return (f"{text}; a working size of {side} ({w} x {h}, the CLI's --size {side}, the Edit Video "
                    f"node's size {side}) would take about {_duration(quick)}")
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and ("DefaultCPUAllocator" in str(e) or "out of memory" in str(e))


# --- a file ------------------------------------------------------------------------------------
def edit_video(model, text_encoder, in_path: str | os.PathLike, out_path: str | os.PathLike,
               prompt: str | PromptSchedule, seed: int = 0, steps: int | None = None,
               cfg_scale: float | None = None, *, window_min: int | None = None,
               window_max: int | None = None, attention: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               chunk_frames: int = 16, size: int | tuple[int, int] | None = None,
               on_warning: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Edit a video file into another, chunk by chunk (memory bounded by the window, not the
    video), with one prompt or a `PromptSchedule`. The output has the input's frame count, size
    and frame rate; it is written atomically (a failure or an interrupt leaves no file).

    size: the working size (`parse_size`, `working_size`): None edits at the video's own size.
    progress(done, total): called after every forward, in forwards (`edit_steps`: one per latent
    frame, then the flush); it may raise to interrupt. total comes from the container's frame
    count (an estimate for some formats) and is corrected when the last frame is read.

    Returns {"frames", "seconds", "fps", "width", "height", "video_fps", "working_size",
    "header_frames", "warnings"}: fps is the editing speed in frames per second. Warnings (a slow
    size, up front; a file shorter than its header says, at the end) are logged and given to
    `on_warning(text)` as they come.
    """
    from ..io.video import VideoReader, VideoWriter  # PyAV only when files are involved

    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    if os.path.exists(out_path) and os.path.exists(in_path) and os.path.samefile(in_path, out_path):
        raise ValueError(f"output path {out_path!r} is the input file; choose another output")
    header = VideoReader(in_path, chunk_frames=chunk_frames)
    width, height = header.width, header.height
    work = working_size(width, height, size, model.config.spatial_stride)
    check_frame_size(model.config, work[1], work[0])
    reader = header if work == (width, height) else VideoReader(in_path, chunk_frames=chunk_frames, size=work)
    editor = StreamEditor(model, text_encoder, prompt, seed=seed, steps=steps, cfg_scale=cfg_scale,
                          window_min=window_min, window_max=window_max, attention=attention)
    warnings = []

    def warn(text: str) -> None:
        warnings.append(text)
        log.warning("%s", text)
        if on_warning is not None:
            on_warning(text)

    slow = slow_size_warning(model.config, *work, header.num_frames, model.device)
    if slow:
        warn(slow)
    stride, n_steps = model.config.temporal_stride, editor.sampler_config.steps
    total = edit_steps(header.num_frames, n_steps, stride)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, max(total, done))

    def write(writer: VideoWriter, frames: Tensor) -> None:
        for i in range(0, frames.shape[0], stride):  # scaled back a few frames at a time
            writer.write(_resize(frames[i:i + stride], width, height))

    start = time.perf_counter()
    try:
        with VideoWriter(out_path, reader.fps, width, height) as writer:
            for chunk in reader:
                for i in range(0, chunk.shape[0], stride):  # one forward each (a whole latent frame)
                    before = editor.frames_in // stride
                    write(writer, editor.feed(chunk[i:i + stride]))
                    for _ in range(editor.frames_in // stride - before):
                        step()
            total = done + edit_steps(editor.frames_in, n_steps, stride) - editor.frames_in // stride
            write(writer, editor.flush(progress=step))
            frames = writer.frames_written
    except Exception as e:
        if _out_of_memory(e):
            raise ValueError(f"out of memory editing {work[0]} x {work[1]} frames on {model.device} "
                             f"({str(e).strip().splitlines()[0][:160]}); edit at a smaller working size "
                             "(the CLI's --size, the Edit Video node's size)") from e
        raise
    seconds = time.perf_counter() - start
    if header.header_frames is not None and frames != header.header_frames:
        warn(f"{in_path}: its header promises {header.header_frames} frames, but {frames} could be decoded "
             f"(a truncated or damaged file?); the output has {frames} frames")
    summary = {"frames": frames, "seconds": seconds, "fps": frames / max(seconds, 1e-9),
               "width": width, "height": height, "video_fps": float(reader.fps), "working_size": work,
               "header_frames": header.header_frames, "warnings": warnings}
    log.info("edited %d frames of %s at %d x %d in %.1f s (%.1f fps) -> %s", frames, in_path, *work, seconds,
             summary["fps"], out_path)
    return summary
