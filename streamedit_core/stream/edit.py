"""Whole clips and whole files through one `StreamEditor`: what the CLI's `edit`, the Edit Video
node, eval and the refiner's training data call."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import torch
from torch import Tensor

from .editor import StreamEditor, check_frame_size
from .schedule import PromptSchedule

log = logging.getLogger(__name__)


def edit_clip(model, text_encoder, frames: Tensor, prompt: str | PromptSchedule, *, seed: int = 0,
              steps: int | None = None, window_min: int | None = None,
              window_max: int | None = None) -> Tensor:
    """The editor's output for a whole clip [T, H, W, 3] (fed at once, then flushed: the output
    does not depend on chunking): [T, H, W, 3] float32 on the CPU."""
    editor = StreamEditor(model, text_encoder, prompt, seed=seed, steps=steps, window_min=window_min,
                          window_max=window_max)
    return torch.cat([editor.feed(frames), editor.flush()])


def edit_video(model, text_encoder, in_path: str | os.PathLike, out_path: str | os.PathLike,
               prompt: str | PromptSchedule, seed: int = 0, steps: int | None = None,
               cfg_scale: float | None = None, *, window_min: int | None = None,
               window_max: int | None = None, attention: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               chunk_frames: int = 16) -> dict[str, Any]:
    """Edit a video file into another, chunk by chunk (memory bounded by the window, not the
    video), with one prompt or a `PromptSchedule`. The output has the input's frame count, size
    and frame rate; it is written atomically (a failure or an interrupt leaves no file).
    `progress(done, total)` is called after each chunk and may raise to interrupt (total is the
    container's frame count, an estimate for some formats). Returns {"frames", "seconds", "fps",
    "width", "height", "video_fps"} where fps is the editing speed in frames per second.
    """
    from ..io.video import VideoReader, VideoWriter  # PyAV only when files are involved

    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    if os.path.exists(out_path) and os.path.exists(in_path) and os.path.samefile(in_path, out_path):
        raise ValueError(f"output path {out_path!r} is the input file; choose another output")
    reader = VideoReader(in_path, chunk_frames=chunk_frames)
    check_frame_size(model.config, reader.height, reader.width)
    editor = StreamEditor(model, text_encoder, prompt, seed=seed, steps=steps, cfg_scale=cfg_scale,
                          window_min=window_min, window_max=window_max, attention=attention)
    total = reader.num_frames
    start = time.perf_counter()
    with VideoWriter(out_path, reader.fps, reader.width, reader.height) as writer:
        done = 0
        for chunk in reader:
            out = editor.feed(chunk)
            if out.shape[0]:
                writer.write(out)
            done += chunk.shape[0]
            if progress is not None:
                progress(done, max(total, done))
        out = editor.flush()
        if out.shape[0]:
            writer.write(out)
        frames = writer.frames_written
    seconds = time.perf_counter() - start
    summary = {"frames": frames, "seconds": seconds, "fps": frames / max(seconds, 1e-9),
               "width": reader.width, "height": reader.height, "video_fps": float(reader.fps)}
    log.info("edited %d frames of %s in %.1f s (%.1f fps) -> %s", frames, in_path, seconds,
             summary["fps"], out_path)
    return summary
