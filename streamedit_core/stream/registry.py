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

Bounded: at most `max_streams` streams (MAX_STREAMS); a stream no job has touched for
`idle_seconds` (IDLE_SECONDS) is dropped, and so is a stream whose owner (the model it runs with,
weakly referenced) is gone; starting a stream past the count drops the least recently used one.
The rollback snapshot is kept in host memory, not on the accelerator. A chunk k > 0 of a
dropped stream is an error that says why it was dropped.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .editor import StreamEditor, map_leaves, to_frames
from .schedule import PromptSchedule

log = logging.getLogger(__name__)

MAX_STREAMS = 16  # streams kept at most; starting one more drops the least recently used idle one
IDLE_SECONDS = 3600.0  # a stream no job has touched for this long is dropped (at the next job)
_REMEMBERED = 1024  # dropped stream ids whose reason a later chunk's error can still name


def check_chunk_order(stream_id: str, chunk_index: int, next_chunk: int | None,
                      why: str | None = None) -> None:
    """The chunk order of a stream across jobs: chunk_index 0 (re)starts it; any other index
    must be the stream's `next_chunk` (None: the stream does not exist; `why`: what dropped it,
    if known). ValueError naming the stream, the index and the expected one otherwise."""
    if chunk_index == 0:
        return
    if next_chunk is None:
        why = why or "never started, reset, or dropped by /free or a server restart"
        raise ValueError(f"stream {stream_id!r} does not exist (it has no state: {why}); got chunk_index "
                         f"{chunk_index}, expected 0: queue chunk_index 0 to start it")
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
    snapshot: dict | None = None  # the parts before that job, in host memory (None: the job started it)
    previous: "Stream | None" = None  # the stream a chunk-0 job replaced, until it finishes
    owner: "weakref.ref | None" = None  # what the stream runs with (a model); gone = the stream is dropped
    last_used: float = 0.0  # when a job last opened or finished it (the registry's clock)
    dropped: str | None = None  # why it goes when its running job finishes (/free during the job)

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

    def owner_gone(self) -> bool:
        return self.owner is not None and self.owner() is None


@dataclass(frozen=True)
class _OnDevice:
    """A tensor of a snapshot, copied to host memory, and the device it goes back to."""
    tensor: Tensor
    device: torch.device


def _offload(obj: Any) -> Any:
    """A state dict with every tensor copied to host memory (rollback snapshots stay off the
    accelerator; `_restore` puts them back where they were)."""
    return map_leaves(obj, lambda t: _OnDevice(t.detach().to("cpu", copy=True), t.device))


def _restore(obj: Any) -> Any:
    return map_leaves(obj, lambda o: o.tensor.to(o.device), leaf=_OnDevice)


def _tensor_bytes(obj: Any, out: dict[str, int]) -> dict[str, int]:
    """Bytes of the tensors in a (nested) state, per device (a snapshot's: on the host)."""
    def count(t: Tensor) -> None:
        out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()

    map_leaves(map_leaves(obj, lambda o: o.tensor, leaf=_OnDevice), count)
    return out


class StreamRegistry:
    """stream_id -> Stream; one per process (`REGISTRY`). Holds at most `max_streams` streams and
    drops a stream idle for `idle_seconds` (see the module docstring); `clock` is for tests."""

    def __init__(self, max_streams: int = MAX_STREAMS, idle_seconds: float = IDLE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise ValueError(f"max_streams must be an int >= 1, got {max_streams!r}")
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be > 0, got {idle_seconds!r}")
        self.max_streams, self.idle_seconds, self._clock = max_streams, float(idle_seconds), clock
        self._streams: dict[str, Stream] = {}
        self._cleared: list[Any] = []  # dropped streams (or clear()'s whole dicts), not yet released
        self._gone: OrderedDict[str, str] = OrderedDict()  # stream_id -> why it was dropped (the last few)
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

    def open(self, stream_id: str, chunk_index: int, *, key: Any, job: Any, owner: Any = None) -> Stream:
        """The stream that `job` works on for `chunk_index`, checked against the chunk order;
        the first open in a job snapshots it (or, at chunk 0, starts a new one). `key`: what the
        stream runs with; a later chunk with another key is an error (restart at chunk 0).
        `owner`: an object the stream lives no longer than (the model it runs with, held weakly:
        when it is gone the stream is dropped); a later chunk with another owner is an error too.
        job None (outside any job): nothing to roll back to, the chunk is committed at once.
        Opening first drops idle and orphaned streams, and starting a stream past `max_streams`
        drops the least recently used one."""
        _check_ids(stream_id, chunk_index)
        try:
            with self._lock:
                self._sweep()
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
                    self._check_key(stream, key, owner)
                elif chunk_index == 0:
                    self._make_room(stream_id)
                    stream = Stream(stream_id, key, job=job, previous=stream,
                                    owner=None if owner is None else weakref.ref(owner))
                    self._streams[stream_id] = stream
                    self._gone.pop(stream_id, None)
                else:
                    check_chunk_order(stream_id, chunk_index, None if stream is None else stream.next_chunk,
                                      self._gone.get(stream_id))
                    self._check_key(stream, key, owner)
                    stream.job, stream.chunk, stream.snapshot = job, chunk_index, _offload(stream.state_dict())
                stream.last_used = self._clock()
                if job is None:
                    self._settle(stream, succeeded=True)
                return stream
        finally:
            self.release_cleared()

    @staticmethod
    def _check_key(stream: Stream, key: Any, owner: Any) -> None:
        if stream.key != key or (stream.owner is not None and stream.owner() is not owner):
            raise ValueError(f"stream {stream.stream_id!r} was started with another model, text encoder, "
                             "seed or sampler settings; restart it with chunk_index 0 to change them")

    def finish(self, job: Any, succeeded: bool) -> None:
        """Commit (succeeded) or roll back every stream `job` has open."""
        with self._lock:
            for stream in [s for s in self._streams.values() if s.job == job]:
                self._settle(stream, succeeded)
                stream.last_used = self._clock()
            self._sweep()
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
            stream.load_state_dict(_restore(stream.snapshot))
        stream.job = stream.snapshot = stream.previous = None
        if stream.dropped is not None and self._streams.get(stream.stream_id) is not None:
            self._drop(stream.stream_id, stream.dropped)  # /free came while the job ran

    # -- bounds --

    def _drop(self, stream_id: str, why: str) -> None:
        """Remove a stream (under the lock); released by `release_cleared`, outside it."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._cleared.append(stream)
        self._gone[stream_id] = why
        self._gone.move_to_end(stream_id)
        while len(self._gone) > _REMEMBERED:
            self._gone.popitem(last=False)
        log.info("stream %r dropped: %s", stream_id, why)

    def _sweep(self) -> None:
        """Drop the streams no running job holds whose owner is gone or that sat idle too long."""
        now = self._clock()
        for stream in list(self._streams.values()):
            if stream.job is not None:
                continue
            if stream.owner_gone():
                self._drop(stream.stream_id, "its model was unloaded (ComfyUI dropped it, or another "
                                              "model was loaded in its place)")
            elif now - stream.last_used > self.idle_seconds:
                self._drop(stream.stream_id, f"no job used it for more than {self.idle_seconds:g} s "
                                              "(IDLE_SECONDS)")

    def _make_room(self, starting: str) -> None:
        """Before a stream starts: drop the least recently used idle streams down to max_streams - 1."""
        others = [s for s in self._streams.values() if s.stream_id != starting]
        idle = sorted((s for s in others if s.job is None), key=lambda s: s.last_used)
        while len(others) >= self.max_streams and idle:
            victim = idle.pop(0)
            others.remove(victim)
            self._drop(victim.stream_id, f"the least recently used of {self.max_streams} streams "
                                          f"(MAX_STREAMS) when stream {starting!r} started")

    def stats(self) -> dict[str, Any]:
        """How many streams are held, their bounds, and the bytes of their state per device
        (made by copying each stream's state: for diagnostics, not for the per-job path)."""
        with self._lock:
            bytes_per_device: dict[str, int] = {}
            for stream in self._streams.values():
                _tensor_bytes(stream.state_dict(), bytes_per_device)
                _tensor_bytes(stream.snapshot, bytes_per_device)
            return {"streams": len(self._streams), "in_jobs": sum(s.job is not None for s in self._streams.values()),
                    "max_streams": self.max_streams, "idle_seconds": self.idle_seconds,
                    "state_bytes": bytes_per_device}

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
        key = (id(text_encoder), *settings.values())
        job = ("feed_chunk", next(self._tokens))
        with self._lock:
            stream = self.open(stream_id, chunk_index, key=key, job=job, owner=model)
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
                self.drop(stream_id, "ended by its final chunk")
            return out

    def drop(self, stream_id: str, why: str = "reset (Reset Stream, or a final chunk)") -> bool:
        """Drop a stream; True if it existed."""
        with self._lock:
            existed = stream_id in self._streams
            self._drop(stream_id, why)
        self.release_cleared()
        return existed

    def clear(self, why: str = "dropped by /free") -> None:
        """Drop every stream; callable from any thread (ComfyUI's server thread, on /free).

        A stream that a running job has open goes when that job finishes (committed or rolled
        back first), so the nodes of one job never see two different streams under one id.
        The dropped streams are released later, by `release_cleared` on the thread that runs
        jobs: a stream may hold the last reference to a model, and in ComfyUI releasing that
        runs its model finalizer, which raced with the worker's own unloading for the same /free
        and killed the worker (an IndexError in `free_memory`) when run on the server thread.
        """
        with self._lock:
            for stream in list(self._streams.values()):
                if stream.job is not None:
                    stream.dropped = why
                else:
                    self._drop(stream.stream_id, why)

    def release_cleared(self) -> None:
        """Release what was dropped; call on the thread that runs jobs (`open` and `finish` do)."""
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
