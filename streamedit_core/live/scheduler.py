"""Between the camera and the editor, and between the editor and the viewer: the latency policy.

The model takes video frames 4 at a time (one latent frame) and may be slower than the camera.
Queuing every frame would make the delay grow without end, so:

- `FrameScheduler` (camera -> editor) keeps only fresh frames. When the editor is ready it takes
  a group of 4: the newest frame and three more evenly spaced back over the frames that arrived
  since the previous group, so the edited stream keeps the camera's motion at its real speed;
  every other frame is dropped, never queued. Frames older than `max_latency_s` are dropped too
  (a stalled editor never works through a backlog), and at most `capacity` frames wait.
- `OutputPacer` (editor -> viewer) spreads each released group evenly over the time the editor
  takes per group (a running estimate), so the viewer sees a steady frame rate instead of bursts
  of 4; between edited frames the output track repeats the last one rather than stall. A group
  that arrives while the previous one is still being shown is spread over what is left of the
  period (the lag is caught up within one group), and a backlog of more than one group is
  skipped to the newest frames: pacing never adds more than one group period of delay.

Both are plain thread-safe objects (the camera side runs on the asyncio loop, the editor in its
worker thread) with an injectable clock, tested without any network.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

GROUP = 4  # video frames per latent frame (the STLE's temporal stride)


@dataclass
class Arrival:
    """One camera frame as it arrived: the frame (an av.VideoFrame or an [H, W, 3] uint8 array,
    converted only if the frame is used), its arrival time and its arrival number."""
    frame: Any
    t: float
    index: int


def pick_even(n: int, k: int) -> list[int]:
    """k indices out of range(n), evenly spaced, the last one n - 1 (the newest), ascending."""
    if n < k:
        raise ValueError(f"cannot pick {k} of {n} frames")
    if k == 1:
        return [n - 1]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


class FrameScheduler:
    """Fresh camera frames, handed to the editor `group` at a time; see the module docstring.

    put(frame) never blocks (the camera side); take() blocks until a group is ready, the timeout
    passes, wake() is called or the scheduler is closed (the editor side).
    """

    def __init__(self, group: int = GROUP, max_latency_s: float = 1.0, capacity: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if group < 1 or capacity < group:
            raise ValueError(f"need group >= 1 and capacity >= group, got group {group}, capacity {capacity}")
        if not max_latency_s > 0:
            raise ValueError(f"max_latency_s must be > 0, got {max_latency_s!r}")
        self.group, self.max_latency_s, self.capacity, self.clock = group, max_latency_s, capacity, clock
        self._frames: collections.deque[Arrival] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._woken = False
        self.received = 0  # frames put
        self.taken = 0  # frames handed to the editor
        self.dropped = 0  # frames dropped: stale, over capacity, or skipped between two groups

    def put(self, frame: Any, t: float | None = None) -> None:
        with self._cond:
            if self._closed:
                return
            self._frames.append(Arrival(frame, self.clock() if t is None else t, self.received))
            self.received += 1
            while len(self._frames) > self.capacity:
                self._frames.popleft()
                self.dropped += 1
            if len(self._frames) >= self.group:
                self._cond.notify_all()

    def take(self, timeout: float | None = None) -> list[Arrival] | None:
        """The next group of `group` frames (oldest first), or None on timeout, wake() or close."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._drop_stale()
                if len(self._frames) >= self.group:
                    frames = list(self._frames)
                    self._frames.clear()
                    keep = pick_even(len(frames), self.group)
                    self.dropped += len(frames) - len(keep)
                    self.taken += len(keep)
                    return [frames[i] for i in keep]
                if self._woken:
                    self._woken = False
                    return None
                wait = None if deadline is None else deadline - self.clock()
                if wait is not None and wait <= 0:
                    return None
                # wake up when the oldest waiting frame turns stale, to drop it
                if self._frames:
                    stale_in = self._frames[0].t + self.max_latency_s - self.clock()
                    wait = max(stale_in, 1e-3) if wait is None else max(min(wait, stale_in), 1e-3)
                self._cond.wait(wait)

    def _drop_stale(self) -> None:
        limit = self.clock() - self.max_latency_s
        while self._frames and self._frames[0].t < limit:
            self._frames.popleft()
            self.dropped += 1

    def wake(self) -> None:
        """Make a waiting take() return None now (a command for the editor is waiting)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frames.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


@dataclass
class _Due:
    frame: Any
    meta: Any
    due: float


@dataclass
class PacedFrame:
    """What the output track shows at a tick: the frame, its meta and whether it is new (False:
    the last edited frame repeated)."""
    frame: Any
    meta: Any
    new: bool


class OutputPacer:
    """Edited frames in (a group at a time, the editor's thread), one frame per tick out (the
    output track); see the module docstring. `period` is the running estimate of the time
    between two groups (an exponential average, `smoothing` the weight of the newest gap)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, smoothing: float = 0.2) -> None:
        self.clock = clock
        self.smoothing = smoothing
        self.period: float | None = None
        self._last_push: float | None = None
        self._queue: collections.deque[_Due] = collections.deque()
        self._last_due = float("-inf")
        self._shown: PacedFrame | None = None
        self._lock = threading.Lock()
        self.pushed = 0  # edited frames pushed
        self.shown = 0  # edited frames shown (each once)
        self.skipped = 0  # edited frames never shown: a backlog skipped, or two due in one tick

    def push(self, frames: list[Any], metas: list[Any], period_hint: float | None = None) -> None:
        """Queue a released group; `period_hint` (e.g. the editor's time for this group) stands
        in for the period until two groups have been seen."""
        if len(frames) != len(metas):
            raise ValueError(f"{len(frames)} frames but {len(metas)} metas")
        if not frames:
            return
        with self._lock:
            now = self.clock()
            if self._last_push is not None:
                gap = now - self._last_push
                self.period = gap if self.period is None else (1 - self.smoothing) * self.period + self.smoothing * gap
            self._last_push = now
            period = self.period if self.period is not None else (period_hint or 0.0)
            n = len(frames)
            start = max(now, self._last_due + period / n)
            if start > now + period:  # more than a group behind: skip to the newest frames
                self.skipped += len(self._queue)
                self._queue.clear()
                start = now
            # show the group by the time the next one is expected: a lag left by an early group
            # is caught up within this one instead of adding to every frame after it
            spacing = (now + period - start) / n
            for i, (frame, meta) in enumerate(zip(frames, metas)):
                self._queue.append(_Due(frame, meta, start + i * spacing))
            self._last_due = start + (len(frames) - 1) * spacing
            self.pushed += len(frames)

    def next(self) -> PacedFrame | None:
        """The newest edited frame that is due (new=True), else the last one again (new=False);
        None before the first edited frame."""
        with self._lock:
            now = self.clock()
            due = None
            skipped = 0
            while self._queue and self._queue[0].due <= now:
                if due is not None:
                    skipped += 1
                due = self._queue.popleft()
            if due is None:
                if self._shown is None:
                    return None
                return PacedFrame(self._shown.frame, self._shown.meta, new=False)
            self.skipped += skipped
            self.shown += 1
            self._shown = PacedFrame(due.frame, due.meta, new=True)
            return self._shown

    def clear(self) -> None:
        """Forget the frames not shown yet and the period (a new stream); the last shown frame
        stays on screen."""
        with self._lock:
            self.skipped += len(self._queue)
            self._queue.clear()
            self._last_due = float("-inf")
            self._last_push = None
            self.period = None

    @property
    def backlog(self) -> int:
        with self._lock:
            return len(self._queue)
