"""One live session: a camera stream in, an edited stream out, through one `StreamEditor`.

    session = LiveSession(model, text_encoder, "make it a pencil sketch", LiveSettings(size=128))
    session.start()                      # the editor runs in the session's worker thread
    session.put_frame(frame)             # camera side (any thread): av.VideoFrame or uint8 array
    paced = session.next_output()        # viewer side, once per output tick (a `PacedFrame`)
    session.command({"prompt": "make it sepia", "transition": 8})   # -> Future of a reply dict
    session.stop("closed"); session.join()

The worker takes groups of 4 fresh frames from a `FrameScheduler` (stale frames are dropped),
centre-crops and resizes them to the session's size, feeds the editor and hands the released
frames to an `OutputPacer`. Commands (prompt, reset, steps) run in the worker between two
groups, so the editor is only ever touched by one thread. Every frame's timing is kept, to
split its latency into queue, pipeline delay, compute and pacing (`LiveStats`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..stream.editor import StreamEditor, check_frame_size, read_prompts, unknown_prompts
from ..stream.schedule import check_prompt
from .frames import fit_frames, to_rgb, to_uint8
from .scheduler import GROUP, FrameScheduler, OutputPacer, PacedFrame

log = logging.getLogger(__name__)

PROMPT_MAX_CHARS = 300  # longer prompts are refused (the demo model's MiniLM reads 32 tokens)
TRANSITION_MAX = 256  # video frames
STEPS_MAX = 12
SIZE_MIN, SIZE_MAX = 32, 1024
COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LiveSettings:
    """What a session runs with; `check(config)` validates it against a model."""
    size: int = 128  # frame height = width in pixels, a multiple of the model's 8-pixel stride
    steps: int | None = None  # denoising levels in flight (None: the model's, 6 for the demo model)
    window_min: int | None = None  # clean history latent frames (None: the model's)
    window_max: int | None = None
    seed: int = 0
    max_latency_s: float = 1.0  # camera frames older than this when the editor is ready are dropped
    transition_frames: int = 8  # default blend length of a prompt change, in video frames
    output_fps: float = 30.0  # ticks of the output track (repeats fill the gaps)
    idle_timeout_s: float = 10.0  # end the session when nothing came from the viewer for this long

    def check(self, config=None) -> "LiveSettings":
        for name in ("size", "seed", "transition_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
        if not SIZE_MIN <= self.size <= SIZE_MAX:
            raise ValueError(f"size must be in [{SIZE_MIN}, {SIZE_MAX}] pixels, got {self.size}")
        if config is not None:
            check_frame_size(config, self.size, self.size)
        elif self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")
        check_steps(self.steps)
        if not 0 <= self.transition_frames <= TRANSITION_MAX:
            raise ValueError(f"transition_frames must be in [0, {TRANSITION_MAX}], got {self.transition_frames}")
        for name in ("max_latency_s", "output_fps", "idle_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        return self


def check_steps(steps: Any) -> None:
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= STEPS_MAX:
        raise ValueError(f"steps must be an int in [1, {STEPS_MAX}], got {steps!r}")


def check_live_prompt(prompt: Any) -> str:
    """The prompt check of the live API: a non-empty string of at most PROMPT_MAX_CHARS."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters long; at most {PROMPT_MAX_CHARS} are accepted")
    return check_prompt(prompt.strip())


def parse_command(msg: Any) -> dict:
    """Validate a command (from the page's data channel or the HTTP API) -> a normalised dict:
    {"prompt": str, "transition": int} | {"reset": True} | {"steps": int} | {"stop": True}.
    ValueError with the reason for anything else."""
    if not isinstance(msg, dict):
        raise ValueError(f"a command must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    keys = set(msg) - {"type", "id"}
    if kind == "prompt" or (kind is None and "prompt" in keys):
        extra = keys - {"prompt", "transition"}
        if extra:
            raise ValueError(f"unknown fields {sorted(extra)} in a prompt command")
        transition = msg.get("transition")
        if transition is not None and (isinstance(transition, bool) or not isinstance(transition, int)
                                       or not 0 <= transition <= TRANSITION_MAX):
            raise ValueError(f"transition must be an int in [0, {TRANSITION_MAX}] video frames, got {transition!r}")
        return {"prompt": check_live_prompt(msg.get("prompt")), "transition": transition}
    if kind in ("reset", "stop", "ping") or (kind is None and keys in ({"reset"}, {"stop"})):
        return {(kind or next(iter(keys))): True}
    if kind == "steps" or (kind is None and "steps" in keys):
        check_steps(msg.get("steps"))
        if msg.get("steps") is None:
            raise ValueError("steps must be an int, got None")
        return {"steps": msg["steps"]}
    raise ValueError(f"unknown command {msg!r}; expected one of: {{\"prompt\": ..., \"transition\": N}}, "
                     "{\"reset\": true}, {\"steps\": N}, {\"stop\": true}")


class LockedText:
    """A text encoder shared by sessions in several threads: its calls under one lock."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self._lock = threading.Lock()

    def encode(self, prompts):
        with self._lock:
            return self.encoder.encode(prompts)

    def null(self, batch: int = 1):
        with self._lock:
            return self.encoder.null(batch)

    def sentence_vectors(self, prompts, member=None):  # the vocabulary's reading of a prompt
        with self._lock:
            return self.encoder.sentence_vectors(prompts, member)

    def __getattr__(self, name: str):
        return getattr(self.encoder, name)


# --- timings and stats -----------------------------------------------------------------------
@dataclass
class FrameTiming:
    """One camera frame through the session (times from time.monotonic, seconds)."""
    index: int  # arrival number
    t_in: float  # arrived from the camera track
    t_fed: float = 0.0  # its group's editor call began
    t_rel: float = 0.0  # the editor call that released its edited frame ended
    compute: float = 0.0  # duration of that releasing call (one DiT forward + STLE)
    t_sent: float = 0.0  # the output track sent it (0: never shown, skipped by the pacer)

    def split(self) -> dict[str, float]:
        """Its server-side latency in parts (seconds): queue (waiting for a group and the
        editor), pipeline (the staggered buffer's (steps - 1) groups), compute, pacing."""
        return {"queue": self.t_fed - self.t_in,
                "pipeline": max(0.0, self.t_rel - self.t_fed - self.compute),
                "compute": self.compute,
                "pacing": self.t_sent - self.t_rel}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def dominant(split: dict[str, float | None]) -> str | None:
    """The part of the latency that is largest (None when nothing is measured yet)."""
    known = {k: v for k, v in split.items() if v is not None}
    return max(known, key=known.get) if known else None


class LiveStats:
    """Rolling counters of one session; `snapshot()` is what the page and the benchmark read."""

    WINDOW_S = 10.0  # stats are over the last 10 s

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep: int = 8192) -> None:
        self.clock = clock
        self.started = clock()
        self._arrivals: collections.deque[float] = collections.deque()
        self._sent: collections.deque[FrameTiming] = collections.deque()
        self._computes: collections.deque[tuple[float, float]] = collections.deque()
        self.log: collections.deque[FrameTiming] = collections.deque(maxlen=keep)  # every shown frame
        self._lock = threading.Lock()

    def _trim(self, dq: collections.deque, key: Callable[[Any], float], now: float) -> None:
        while dq and key(dq[0]) < now - self.WINDOW_S:
            dq.popleft()

    def arrived(self, t: float) -> None:
        with self._lock:
            self._arrivals.append(t)
            self._trim(self._arrivals, lambda x: x, t)

    def computed(self, t: float, seconds: float) -> None:
        with self._lock:
            self._computes.append((t, seconds))
            self._trim(self._computes, lambda x: x[0], t)

    def sent(self, timing: FrameTiming) -> None:
        with self._lock:
            self._sent.append(timing)
            self.log.append(timing)
            self._trim(self._sent, lambda x: x.t_sent, timing.t_sent)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            for dq, key in ((self._arrivals, lambda x: x), (self._sent, lambda x: x.t_sent),
                            (self._computes, lambda x: x[0])):
                self._trim(dq, key, now)
            span = min(self.WINDOW_S, max(now - self.started, 1e-6))
            totals = [f.t_sent - f.t_in for f in self._sent]
            parts = [f.split() for f in self._sent]
            computes = [c for _, c in self._computes]
            split = {k: percentile([p[k] for p in parts], 50) for k in ("queue", "pipeline", "compute", "pacing")}
            ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
            return {
                "input_fps": round(len(self._arrivals) / span, 2),
                "output_fps": round(len(self._sent) / span, 2),
                "latency_ms": {f"p{q}": ms(percentile(totals, q)) for q in (50, 95, 99)},
                "split_ms": {k: ms(v) for k, v in split.items()},
                "dominant": dominant(split),
                "model_ms_per_step": ms(percentile(computes, 50)),
                "uptime_s": round(now - self.started, 1),
            }


# --- the session ---------------------------------------------------------------------------
class SessionEnded(RuntimeError):
    """A command sent to a session that has ended."""


class LiveSession:
    """One camera stream through one StreamEditor; see the module docstring.

    guard: called before each group; a string it returns ends the session with that reason (the
    ComfyUI node passes "is the model still loaded"). on_end(reason): called once, from the
    worker thread, when the worker stops for any reason.
    """

    def __init__(self, model, text_encoder, prompt: str, settings: LiveSettings = LiveSettings(), *,
                 guard: Callable[[], str | None] | None = None,
                 on_end: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model, self.text_encoder = model, text_encoder
        self.settings = settings.check(model.config)
        self.prompt = check_live_prompt(prompt)
        self.guard, self.on_end, self.clock = guard, on_end, clock
        self.scheduler = FrameScheduler(GROUP, settings.max_latency_s, clock=clock)
        self.pacer = OutputPacer(clock=clock)
        self.stats = LiveStats(clock)
        self.editor: StreamEditor | None = None
        self.read_as: str | None = None  # which known edit the prompt is read as (closed vocabulary)
        self.warning: str | None = None  # set when the prompt is not an edit the model knows
        self.steps: int | None = None
        self.end_reason: str | None = None
        self.ended = threading.Event()
        self.last_heard = clock()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight: collections.deque[FrameTiming] = collections.deque()  # fed, not released
        self._stop_reason: str | None = None
        self.steps_wanted = settings.steps  # what the editor is (re)built with
        self._thread = threading.Thread(target=self._run, name="streamedit-live", daemon=True)

    # -- any thread --
    def start(self) -> None:
        self._thread.start()

    def put_frame(self, frame: Any, heard: bool = True) -> None:
        """A camera frame (av.VideoFrame or [H, W, 3] uint8); heard=False for frames that do not
        come from the viewer (a server-side file), which do not keep the session alive."""
        now = self.clock()
        if heard:
            self.last_heard = now
        self.stats.arrived(now)
        self.scheduler.put(frame, now)

    def heard(self) -> None:
        """The viewer is still there (a message on the data channel)."""
        self.last_heard = self.clock()

    def command(self, cmd: dict) -> concurrent.futures.Future:
        """Queue a parsed command (`parse_command`) for the worker; the Future gives the reply
        dict or raises the ValueError the editor raised."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.ended.is_set():
            future.set_exception(SessionEnded(f"the session has ended ({self.end_reason})"))
            return future
        self._commands.put((cmd, future))
        self.scheduler.wake()
        if self.ended.is_set():  # ended meanwhile: the worker will not read the queue again
            self._fail_commands()
        return future

    def reconfigure(self, model=None, text_encoder=None, settings: LiveSettings | None = None,
                    prompt: str | None = None) -> concurrent.futures.Future:
        """New model, encoder, settings and/or prompt (the ComfyUI node re-queued): the worker
        rebuilds its editor where the model or settings changed, else switches the prompt."""
        if settings is not None:
            settings.check((model or self.model).config)
        if prompt is not None:
            prompt = check_live_prompt(prompt)
        return self.command({"reconfigure": (model, text_encoder, settings, prompt)})

    def next_output(self) -> PacedFrame | None:
        """For the output track, once per tick: the frame to show (see `OutputPacer.next`)."""
        paced = self.pacer.next()
        if paced is not None and paced.new and paced.meta is not None:
            paced.meta.t_sent = self.clock()
            self.stats.sent(paced.meta)
        return paced

    def stop(self, reason: str = "stopped") -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self.scheduler.close()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> dict[str, Any]:
        editor = self.editor
        out = self.stats.snapshot()
        received = self.scheduler.received
        out.update({
            "size": self.settings.size, "steps": self.steps, "prompt": self.prompt, "read_as": self.read_as,
            "warning": self.warning,
            "frames_in": received, "frames_edited": self.pacer.pushed, "frames_dropped": self.scheduler.dropped,
            "dropped_share": round(self.scheduler.dropped / received, 4) if received else 0.0,
            "frames_skipped": self.pacer.skipped,
            "warmup_frames": editor.warmup_frames if editor is not None else None,
            "state": ("ended" if self.ended.is_set() else "starting" if editor is None
                      else "warming up" if self.pacer.pushed == 0 else "running"),
            "end_reason": self.end_reason,
        })
        return out

    # -- the worker thread --
    def _new_editor(self) -> None:
        s = self.settings
        self.editor = StreamEditor(self.model, self.text_encoder, self.prompt, seed=s.seed,
                                   steps=self.steps_wanted, window_min=s.window_min, window_max=s.window_max)
        self.steps = self.editor.sampler_config.steps
        self._in_flight.clear()
        self.pacer.clear()
        self._read_prompt()

    def _read_prompt(self) -> None:
        readings = read_prompts(self.model, self.text_encoder, [self.prompt])
        self.read_as = None if readings is None else readings[self.prompt].edit
        self.warning = next(iter(unknown_prompts(self.model, readings)), None)

    def _run(self) -> None:
        reason = "stopped"
        try:
            with torch.inference_mode():
                self._new_editor()
            while True:
                self._do_commands()
                if self._stop_reason is not None:
                    reason = self._stop_reason
                    break
                if self.guard is not None:
                    why = self.guard()
                    if why:
                        reason = why
                        break
                if self.clock() - self.last_heard > self.settings.idle_timeout_s:
                    reason = f"nothing heard from the viewer for {self.settings.idle_timeout_s:g} s"
                    break
                group = self.scheduler.take(timeout=0.25)
                if group:
                    self._edit(group)
        except Exception as e:  # the session ends; the server keeps serving the others
            log.exception("live session failed")
            reason = f"error: {e}"
        finally:
            self.scheduler.close()
            self.end_reason = self._stop_reason or reason
            self._fail_commands()
            self.editor = None  # frees the editor's buffers (the model is shared)
            self._in_flight.clear()
            self.ended.set()
            if self.on_end is not None:
                try:
                    self.on_end(self.end_reason)
                except Exception:
                    log.exception("live session on_end failed")

    def _edit(self, group) -> None:
        """1. crop/resize the group, 2. one editor call, 3. released frames to the pacer."""
        frames = fit_frames([to_rgb(a.frame) for a in group], self.settings.size)  # [4, S, S, 3]
        t_fed = self.clock()
        for a in group:
            self._in_flight.append(FrameTiming(a.index, a.t, t_fed))
        out = self.editor.feed(frames)  # [k, S, S, 3], k = 0 during warm-up, else 4
        t_rel = self.clock()
        compute = t_rel - t_fed
        self.stats.computed(t_rel, compute)
        released = [self._in_flight.popleft() for _ in range(out.shape[0])]
        for timing in released:
            timing.t_rel, timing.compute = t_rel, compute
        if released:
            self.pacer.push(list(to_uint8(out)), released, period_hint=compute)

    def _do_commands(self) -> None:
        while True:
            try:
                cmd, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with torch.inference_mode():
                    future.set_result(self._apply(cmd))
            except Exception as e:
                future.set_exception(e)

    def _apply(self, cmd: dict) -> dict:
        if "prompt" in cmd:
            transition = cmd.get("transition")
            transition = self.settings.transition_frames if transition is None else transition
            self.editor.set_prompt(cmd["prompt"], transition)
            self.prompt = cmd["prompt"]
            self._read_prompt()
            return {"prompt": self.prompt, "read_as": self.read_as, "warning": self.warning,
                    "transition": transition}
        if cmd.get("reset"):
            self.editor.reset()
            self._in_flight.clear()
            self.pacer.clear()
            return {"reset": True}
        if "steps" in cmd:
            self.steps_wanted = cmd["steps"]
            self._new_editor()
            return {"steps": self.steps}
        if cmd.get("ping"):
            return {"pong": True}
        if "reconfigure" in cmd:
            model, text, settings, prompt = cmd["reconfigure"]
            rebuild = (model is not None and model is not self.model) or \
                      (settings is not None and settings != self.settings) or \
                      (text is not None and text is not self.text_encoder)
            self.model = model or self.model
            self.text_encoder = text or self.text_encoder
            if settings is not None:
                self.settings = settings
                self.steps_wanted = settings.steps
                self.scheduler.max_latency_s = settings.max_latency_s
            if rebuild:
                self.prompt = prompt or self.prompt
                self._new_editor()
            elif prompt is not None and prompt != self.prompt:
                return self._apply({"prompt": prompt})  # over the settings' transition
            return {"reconfigured": rebuild, "prompt": self.prompt, "read_as": self.read_as,
                    "warning": self.warning}
        raise ValueError(f"unknown command {cmd!r}")

    def _fail_commands(self) -> None:
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(SessionEnded(f"the session has ended ({self.end_reason})"))
