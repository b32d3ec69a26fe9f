"""Live streams across queued jobs: a registry of StreamEditors keyed by `stream_id`.

A ComfyUI job carries one chunk of a stream with an explicit `chunk_index`: 0 starts (or
restarts) the stream, each later chunk must be the next index. The registry keeps the editor
between jobs; a chunk continues exactly as `StreamEditor.feed` on the concatenated frames would.
Every feed is transactional: the editor is snapshot first and restored if anything raises
(ComfyUI's interrupt arrives as an exception from the progress callback), so an interrupted
job can simply be queued again with the same chunk_index. Thread-safe; no ComfyUI import.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .editor import StreamEditor, to_frames

log = logging.getLogger(__name__)


def check_chunk_order(stream_id: str, chunk_index: int, next_chunk: int | None) -> None:
    """The chunk order of a stream across jobs: chunk_index 0 (re)starts it; any other index
    must be the stream's `next_chunk` (None: the stream does not exist). ValueError naming the
    stream, the index and the expected one otherwise. Shared by this registry and the ComfyUI
    nodes' (nodes/streaming.py), whose jobs span several nodes."""
    if chunk_index == 0:
        return
    if next_chunk is None:
        raise ValueError(f"stream {stream_id!r} does not exist (it has no state: never started, "
                         f"reset, or dropped by /free); got chunk_index {chunk_index}, expected 0: "
                         "queue chunk_index 0 to start it")
    if chunk_index != next_chunk:
        what = "repeats a chunk" if chunk_index < next_chunk else "skips chunks"
        raise ValueError(f"stream {stream_id!r}: got chunk_index {chunk_index}, expected {next_chunk} "
                         f"(the next chunk is {next_chunk}; chunk_index {chunk_index} {what}; "
                         "0 restarts the stream)")


@dataclass
class _Stream:
    editor: StreamEditor
    next_chunk: int  # the chunk_index the next job must carry
    key: tuple  # (id(model), id(text_encoder), seed, steps, cfg_scale, window_min, window_max)


class StreamRegistry:
    """stream_id -> live StreamEditor and its next expected chunk_index."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        # One lock around a whole feed: jobs share one model on one device, so running them one
        # at a time costs nothing, and a stream is never seen half-updated.
        self._lock = threading.RLock()

    def __contains__(self, stream_id: str) -> bool:
        with self._lock:
            return stream_id in self._streams

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def next_chunk(self, stream_id: str) -> int:
        """The chunk_index the stream expects next (0 for an unknown stream)."""
        with self._lock:
            s = self._streams.get(stream_id)
            return 0 if s is None else s.next_chunk

    def feed_chunk(self, stream_id: str, chunk_index: int, frames: Any, *, model, text_encoder,
                   prompt: str, seed: int = 0, steps: int | None = None,
                   cfg_scale: float | None = None, window_min: int | None = None,
                   window_max: int | None = None, transition_frames: int = 0,
                   final: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Feed chunk `chunk_index` of stream `stream_id`; returns the edited frames ready now
        ([T', H, W, 3] float32, CPU; empty during warm-up). `final=True` also flushes: the rest
        of the stream comes out and the stream is removed. A prompt different from the stream's
        switches to it (blended over `transition_frames`). Changing the model, text encoder,
        seed or sampler settings needs a restart (chunk_index 0). `progress(done, total)` is
        called per latent frame (4 video frames) and may raise to interrupt."""
        if not isinstance(stream_id, str) or not stream_id.strip():
            raise ValueError(f"stream_id must be a non-empty string, got {stream_id!r}")
        if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or chunk_index < 0:
            raise ValueError(f"chunk_index must be an int >= 0, got {chunk_index!r}")
        frames = to_frames(frames)
        key = (id(model), id(text_encoder), seed, steps, cfg_scale, window_min, window_max)
        with self._lock:
            stream = self._streams.get(stream_id)
            if chunk_index == 0:
                editor = StreamEditor(model, text_encoder, prompt, seed=seed, steps=steps,
                                      cfg_scale=cfg_scale, window_min=window_min,
                                      window_max=window_max)
                stream = _Stream(editor, 0, key)
                fresh = True
            else:
                check_chunk_order(stream_id, chunk_index, None if stream is None else stream.next_chunk)
                if key != stream.key:
                    raise ValueError(f"stream {stream_id!r} was started with another model, text "
                                     "encoder, seed or sampler settings; use chunk_index 0 to "
                                     "restart it with the new ones")
                fresh = False
            editor = stream.editor
            snapshot = None if fresh else editor.state_dict()
            try:
                if prompt != editor.prompt:
                    editor.set_prompt(prompt, transition_frames)
                out = _feed(editor, frames, progress)
                if final:
                    out = torch.cat([out, editor.flush()])
            except BaseException:
                if snapshot is not None:
                    editor.load_state_dict(snapshot)
                raise
            if final:
                self._streams.pop(stream_id, None)
            else:
                stream.next_chunk = chunk_index + 1
                self._streams[stream_id] = stream
            return out

    def reset(self, stream_id: str) -> bool:
        """Drop a stream; True if it existed."""
        with self._lock:
            return self._streams.pop(stream_id, None) is not None

    def clear(self) -> None:
        """Drop every stream (ComfyUI's /free, or unloading the model)."""
        with self._lock:
            self._streams.clear()


def _feed(editor: StreamEditor, frames: Tensor, progress) -> Tensor:
    """Feed in steps of one latent frame so `progress` can interrupt between them; the output is
    the same as one feed (StreamEditor does not depend on chunking)."""
    if progress is None:
        return editor.feed(frames)
    step = editor.model.config.temporal_stride
    outs, total = [], frames.shape[0]
    for i in range(0, total, step):
        outs.append(editor.feed(frames[i:i + step]))
        progress(min(i + step, total), total)
    return torch.cat(outs) if outs else editor.feed(frames)


# The process-wide registry the ComfyUI nodes use.
REGISTRY = StreamRegistry()


def feed_chunk(stream_id: str, chunk_index: int, frames: Any, **kwargs: Any) -> Tensor:
    """`REGISTRY.feed_chunk` (see StreamRegistry.feed_chunk)."""
    return REGISTRY.feed_chunk(stream_id, chunk_index, frames, **kwargs)


def reset(stream_id: str) -> bool:
    return REGISTRY.reset(stream_id)


def clear() -> None:
    REGISTRY.clear()
