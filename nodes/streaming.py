"""Stream state across queued ComfyUI jobs, all-or-nothing per job.

A stream (keyed by `stream_id`) is continued by one job per chunk: STLE Encode, DiT Sampler and
STLE Decode each keep their part of the stream (encoder cache, `StreamEditor` with the ASW
buffer, decoder cache) in the stream's entry, and process the chunk in units of one latent
frame (4 video frames) exactly as `StreamEditor.feed` does, so chunk jobs give the frames the
core editor gives for the same input.

Why a job-level transaction here and not in the core: a ComfyUI job runs several of our nodes
and may fail or be interrupted in any node, after another one has already advanced its part.
So the first node of a job that touches a stream snapshots the whole entry; when the next job
touches it, the previous job is committed if ComfyUI's history says it succeeded, and rolled
back to the snapshot otherwise. An interrupted job thus leaves the stream as it was before.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from comfy_execution.utils import get_executing_context

from ..streamedit_core.stream.editor import StreamEditor
from ..streamedit_core.stream.registry import check_chunk_order


@dataclass
class StreamEntry:
    stream_id: str
    parts: dict[str, Any] = field(default_factory=dict)  # "encoder"/"decoder": CausalCache, "editor"
    owner: Any = None  # the model the stream was started with (patcher): a new one is an error
    next_chunk: int = 0  # the chunk_index the next job must bring
    job: str | None = None  # prompt id of the job that touched the entry last, until settled
    chunk: int | None = None  # ... and the chunk_index it brought
    snapshot: dict | None = None  # state before that job (None: the job started the stream)
    previous: "StreamEntry | None" = None  # the stream a chunk-0 job replaced

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            if name in state:
                part.load_state_dict(state[name])


def _job_succeeded(prompt_id: str) -> bool:
    from server import PromptServer

    status = PromptServer.instance.prompt_queue.get_history(
        prompt_id=prompt_id, map_function=lambda item: item.get("status"))
    status = status.get(prompt_id) if status else None
    return bool(status) and status.get("status_str") == "success"


def current_job() -> str | None:
    context = get_executing_context()
    return context.prompt_id if context is not None else None


class StreamRegistry:
    """stream_id -> StreamEntry; one per ComfyUI process."""

    def __init__(self) -> None:
        self._entries: dict[str, StreamEntry] = {}
        self._cleared: list[dict[str, StreamEntry]] = []  # dropped by clear(), not yet released
        self._lock = threading.Lock()

    def open(self, stream_id: str, chunk_index: int, owner: Any, job: str | None) -> StreamEntry:
        """The entry a node of `job` works on for `chunk_index`; checks the chunk order."""
        self.release_cleared()
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is not None and entry.job is not None and entry.job != job:
                entry = self._settle(entry)
            if entry is not None and entry.job == job and job is not None:
                if chunk_index != entry.chunk:
                    raise ValueError(f"stream {stream_id!r}: nodes of one job disagree on chunk_index "
                                     f"({entry.chunk} and {chunk_index}); give them the same value")
            elif chunk_index == 0:
                entry = StreamEntry(stream_id, owner=owner, job=job, chunk=0, previous=entry)
                self._entries[stream_id] = entry
            else:
                check_chunk_order(stream_id, chunk_index, None if entry is None else entry.next_chunk)
                entry.job, entry.chunk, entry.snapshot = job, chunk_index, entry.state_dict()
            if entry.owner is not owner:
                raise ValueError(f"stream {stream_id!r} was started with another model; restart it "
                                 "with chunk_index 0 to switch models")
            if job is None:  # outside a ComfyUI job: nothing to roll back to, commit at once
                entry.job, entry.next_chunk = None, chunk_index + 1
            return entry

    def _settle(self, entry: StreamEntry) -> StreamEntry | None:
        """Commit the entry's last job if it succeeded, else roll back; returns the live entry."""
        if _job_succeeded(entry.job):
            entry.next_chunk = entry.chunk + 1
        elif entry.chunk == 0:  # the failed job (re)started the stream: put the old one back
            previous = entry.previous
            if previous is None:
                del self._entries[entry.stream_id]
            else:
                self._entries[entry.stream_id] = previous
            return previous
        else:
            entry.load_state_dict(entry.snapshot)
        entry.job = entry.chunk = entry.snapshot = entry.previous = None
        return entry

    def drop(self, stream_id: str) -> bool:
        self.release_cleared()
        with self._lock:
            return self._entries.pop(stream_id, None) is not None

    def clear(self) -> None:
        """Drop every stream; callable from any thread (the server's, on /free).

        The dropped entries are only released later, by `release_cleared` on the worker thread:
        an entry may hold the last reference to a model, and releasing it runs ComfyUI's model
        finalizer (`cleanup_models`, which pops from `current_loaded_models`). Run on the server
        thread, that raced with the worker's own unloading for the same /free (`free_memory`
        indexes that list) and killed the worker with an IndexError: no job ran after that.
        """
        with self._lock:
            self._cleared.append(self._entries)
            self._entries = {}

    def release_cleared(self) -> None:
        """Release what `clear` dropped; call on the worker thread only (nodes do, in `open`)."""
        with self._lock:
            cleared, self._cleared = self._cleared, []
        cleared.clear()  # the entries' last references go here, outside the lock

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._entries


STREAMS = StreamRegistry()


def part(entry: StreamEntry, name: str, create) -> Any:
    """The entry's part `name`; created by `create()` only when the stream starts (chunk 0)."""
    if name not in entry.parts:
        if entry.chunk != 0:
            raise ValueError(f"stream {entry.stream_id!r} was started (chunk 0) without a node that "
                             f"keeps its {name}; restart it with chunk_index 0")
        entry.parts[name] = create()
    return entry.parts[name]


def check_editor_settings(editor: StreamEditor, stream_id: str, seed: int, steps: int,
                          window_min: int, window_max: int) -> None:
    cfg = editor.sampler_config
    now = dict(seed=seed, steps=steps, window_min=window_min, window_max=window_max)
    then = dict(seed=editor.seed, steps=cfg.steps, window_min=cfg.window_min, window_max=cfg.window_max)
    if now != then:
        raise ValueError(f"stream {stream_id!r} was started with {then}; this chunk asks for {now}. "
                         "Restart the stream (chunk_index 0) to change them")
