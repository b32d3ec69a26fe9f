"""Streams that live across queued jobs: one registry of stream state keyed by `stream_id`.

A job carries one chunk of a stream with an explicit `chunk_index`: 0 starts (or restarts) the
stream, each later chunk must be the next index. A stream holds named *parts*, each with
`state_dict`/`load_state_dict`: a `StreamEditor` for whole frames (`feed_chunk`, the core API),
or, in ComfyUI, the STLE encoder cache, the editor and the decoder cache that the three latent
nodes of one job keep.

Every job is a transaction over the streams it touches: the first `open` of a stream in a job
snapshots it, `finish(job, succeeded)` commits (the next chunk is due) or rolls back to the
snapshot (a failed or interrupted job leaves the stream as it was, so the same chunk can be
queued again). A job that (re)starts a stream and fails puts the stream it replaced back.
Thread-safe; no ComfyUI import (the nodes call `finish` when ComfyUI reports a job done).
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .editor import StreamEditor, to_frames
from .schedule import PromptSchedule

log = logging.getLogger(__name__)


def check_chunk_order(stream_id: str, chunk_index: int, next_chunk: int | None) -> None:
    """The chunk order of a stream across jobs: chunk_index 0 (re)starts it; any other index
    must be the stream's `next_chunk` (None: the stream does not exist). ValueError naming the
    stream, the index and the expected one otherwise."""
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


def check_editor_settings(editor: StreamEditor, stream_id: str, *, seed: int, steps: int,
                          window_min: int, window_max: int) -> None:
    """ValueError unless a chunk asks for the settings the stream's editor was started with."""
    cfg = editor.sampler_config
    now = dict(seed=seed, steps=steps, window_min=window_min, window_max=window_max)
    then = dict(seed=editor.seed, steps=cfg.steps, window_min=cfg.window_min, window_max=cfg.window_max)
    if now != then:
        raise ValueError(f"stream {stream_id!r} was started with {then}; this chunk asks for {now}. "
                         "Restart the stream (chunk_index 0) to change them")


def _check_ids(stream_id: Any, chunk_index: Any) -> None:
    if not isinstance(stream_id, str) or not stream_id.strip():
        raise ValueError(f"stream_id must be a non-empty string, got {stream_id!r}")
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or chunk_index < 0:
        raise ValueError(f"chunk_index must be an int >= 0, got {chunk_index!r}")


@dataclass
class Stream:
    """One stream's state: its parts, and where it stands in the chunk order."""
    stream_id: str
    key: Any  # what the stream was started with (a model, settings): another needs chunk 0
    parts: dict[str, Any] = field(default_factory=dict)
    next_chunk: int = 0  # the chunk_index the next job must bring
    chunk: int = 0  # the chunk_index of the job that has it open
    job: Any = None  # that job, until it finishes
    snapshot: dict | None = None  # the parts before that job (None: the job started the stream)
    previous: "Stream | None" = None  # the stream a chunk-0 job replaced, until it finishes

    def part(self, name: str, create: Callable[[], Any]) -> Any:
        """The part `name`, made by `create()` when the stream starts (chunk 0)."""
        if name not in self.parts:
            if self.chunk != 0:
                raise ValueError(f"stream {self.stream_id!r} was started (chunk 0) without a node that "
                                 f"keeps its {name}; restart it with chunk_index 0")
            self.parts[name] = create()
        return self.parts[name]

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            if name in state:
                part.load_state_dict(state[name])


class StreamRegistry:
    """stream_id -> Stream; one per process (`REGISTRY`)."""

    def __init__(self) -> None:
        self._streams: dict[str, Stream] = {}
        self._cleared: list[dict[str, Stream]] = []  # dropped by clear(), not yet released
        # One lock around a whole job step: jobs share one model on one device, so running them
        # one at a time costs nothing, and a stream is never seen half-updated.
        self._lock = threading.RLock()
        self._tokens = itertools.count()

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

    def open(self, stream_id: str, chunk_index: int, *, key: Any, job: Any) -> Stream:
        """The stream that `job` works on for `chunk_index`, checked against the chunk order;
        the first open in a job snapshots it (or, at chunk 0, starts a new one). `key`: what the
        stream runs with; a later chunk with another key is an error (restart at chunk 0).
        job None (outside any job): nothing to roll back to, the chunk is committed at once."""
        _check_ids(stream_id, chunk_index)
        self.release_cleared()
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is not None and stream.job is not None and stream.job != job:
                # The hook that reports finished jobs did not run for it: it returned from every
                # node, so count it as done.
                log.warning("stream %r: job %r was never reported finished; committing it",
                            stream_id, stream.job)
                self._settle(stream, succeeded=True)
                stream = self._streams.get(stream_id)
            if stream is not None and job is not None and stream.job == job:
                if chunk_index != stream.chunk:
                    raise ValueError(f"stream {stream_id!r}: nodes of one job disagree on chunk_index "
                                     f"({stream.chunk} and {chunk_index}); give them the same value")
            elif chunk_index == 0:
                stream = Stream(stream_id, key, job=job, previous=stream)
                self._streams[stream_id] = stream
            else:
                check_chunk_order(stream_id, chunk_index, None if stream is None else stream.next_chunk)
                self._check_key(stream, key)
                stream.job, stream.chunk, stream.snapshot = job, chunk_index, stream.state_dict()
            self._check_key(stream, key)
            if job is None:
                self._settle(stream, succeeded=True)
            return stream

    @staticmethod
    def _check_key(stream: Stream, key: Any) -> None:
        if stream.key != key:
            raise ValueError(f"stream {stream.stream_id!r} was started with another model, text encoder, "
                             "seed or sampler settings; restart it with chunk_index 0 to change them")

    def finish(self, job: Any, succeeded: bool) -> None:
        """Commit (succeeded) or roll back every stream `job` has open."""
        with self._lock:
            for stream in [s for s in self._streams.values() if s.job == job]:
                self._settle(stream, succeeded)
        self.release_cleared()

    def _settle(self, stream: Stream, succeeded: bool) -> None:
        if succeeded:
            stream.next_chunk = stream.chunk + 1
        elif stream.snapshot is None:  # the failed job (re)started the stream: put the old one back
            if stream.previous is None:
                del self._streams[stream.stream_id]
            else:
                self._streams[stream.stream_id] = stream.previous
        else:
            stream.load_state_dict(stream.snapshot)
        stream.job = stream.snapshot = stream.previous = None

    def feed_chunk(self, stream_id: str, chunk_index: int, frames: Any, *, model, text_encoder,
                   prompt: str | PromptSchedule, seed: int = 0, steps: int | None = None,
                   cfg_scale: float | None = None, window_min: int | None = None,
                   window_max: int | None = None, transition_frames: int = 0,
                   final: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Feed chunk `chunk_index` of stream `stream_id` (frames [T, H, W, 3]) as one job; returns
        the edited frames ready now ([T', H, W, 3] float32, CPU; empty during warm-up).
        `final=True` also flushes: the rest of the stream comes out and the stream is removed.
        A prompt different from the stream's is switched to, blended over `transition_frames`
        (a schedule brings its own). Changing the model, text encoder, seed or sampler settings
        needs a restart (chunk_index 0). `progress(done, total)` is called per latent frame
        (4 video frames) and may raise to interrupt: the stream is then as before the call."""
        _check_ids(stream_id, chunk_index)
        frames = to_frames(frames)
        schedule = prompt if isinstance(prompt, PromptSchedule) else PromptSchedule.single(prompt, transition_frames)
        settings = dict(seed=seed, steps=steps, cfg_scale=cfg_scale, window_min=window_min, window_max=window_max)
        key = (id(model), id(text_encoder), *settings.values())
        job = ("feed_chunk", next(self._tokens))
        with self._lock:
            stream = self.open(stream_id, chunk_index, key=key, job=job)
            try:
                editor = stream.part("editor", lambda: StreamEditor(model, text_encoder, schedule, **settings))
                editor.set_schedule(schedule)
                out = feed(editor, frames, progress)
                if final:
                    out = torch.cat([out, editor.flush()])
            except BaseException:
                self.finish(job, succeeded=False)
                raise
            self.finish(job, succeeded=True)
            if final:
                self.drop(stream_id)
            return out

    def drop(self, stream_id: str) -> bool:
        """Drop a stream; True if it existed."""
        self.release_cleared()
        with self._lock:
            return self._streams.pop(stream_id, None) is not None

    def clear(self) -> None:
        """Drop every stream; callable from any thread (ComfyUI's server thread, on /free).

        The dropped streams are released later, by `release_cleared` on the thread that runs
        jobs: a stream may hold the last reference to a model, and in ComfyUI releasing that
        runs its model finalizer, which raced with the worker's own unloading for the same /free
        and killed the worker (an IndexError in `free_memory`) when run on the server thread.
        """
        with self._lock:
            self._cleared.append(self._streams)
            self._streams = {}

    def release_cleared(self) -> None:
        """Release what `clear` dropped; call on the thread that runs jobs (`open` and `finish` do)."""
        with self._lock:
            cleared, self._cleared = self._cleared, []
        cleared.clear()  # the streams' last references go here, outside the lock


def feed(editor: StreamEditor, frames: Tensor, progress: Callable[[int, int], None] | None) -> Tensor:
    """`editor.feed(frames)` in steps of one latent frame, calling `progress(done, total)` after
    each so that it can interrupt between them; the output is the same as one feed (the editor
    does not depend on chunking)."""
    if progress is None:
        return editor.feed(frames)
    step = editor.model.config.temporal_stride
    outs, total = [], frames.shape[0]
    for i in range(0, total, step):
        outs.append(editor.feed(frames[i:i + step]))
        progress(min(i + step, total), total)
    return torch.cat(outs) if outs else editor.feed(frames)


# The process-wide registry (the ComfyUI nodes use it).
REGISTRY = StreamRegistry()
