"""StreamEditor: the one editing API that the ComfyUI nodes, the CLI and eval call.

Frames go through in units of exactly one latent frame (4 video frames): STLE encode (causal
cache) -> streaming sampler (one DiT forward) -> STLE decode (causal cache). Incoming frames
are buffered until 4 are there, and the noise of latent frame i is seeded by (seed, i), so the
output is bit-identical whatever chunk sizes the frames arrive in.

Lifecycle: `feed` returns the edited frames that are ready (none during the warm-up of
steps - 1 latent frames); `flush` pads a tail that is not a multiple of 4 by repeating the last
frame, drains the frames still in flight, trims the output to the number of frames fed and
starts a new stream. `set_prompt` switches prompts (optionally blended over a transition), a
`PromptSchedule` switches them at given frames, `reset` starts a new stream,
`state_dict`/`load_state_dict` snapshot and restore everything.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import MAX_FRAME_PIXELS, ModelConfig
from ..model.vocabulary import NO_EDIT, Reading
from ..types import TextEmbedding
from .sampler import StreamSampler
from .schedule import PromptSchedule, check_prompt

_STATE_VERSION = 2


# --- input checks (the one place user input to the editor is validated) -----------------
def check_frame_size(config: ModelConfig, height: int, width: int) -> None:
    """ValueError naming the size and the nearest valid sizes when H or W is not a multiple of
    the model's spatial stride (the STLE's 8x; the DiT pads its token grid itself), or naming the
    limit when H x W is past `MAX_FRAME_PIXELS` (1920 x 1080)."""
    m = config.spatial_stride
    if height * width > MAX_FRAME_PIXELS:
        raise ValueError(f"frame size (height x width) {height} x {width} ({height * width / 1e6:.1f} megapixels) "
                         f"is past the limit of {MAX_FRAME_PIXELS / 1e6:.2f} megapixels (MAX_FRAME_PIXELS: "
                         "1920 x 1080); edit it at a smaller working size (the CLI's --size, the Edit Video "
                         "node's size) or scale the video down first")
    if height % m == 0 and width % m == 0 and height > 0 and width > 0:
        return

    def nearest(n: int) -> list[int]:
        down, up = n // m * m, -(-n // m) * m
        return sorted({v for v in (down, up) if v > 0}) or [m]

    options = [f"{h} x {w}" for h in nearest(height) for w in nearest(width)]
    raise ValueError(f"frame size (height x width) {height} x {width} is not supported: both must be "
                     f"multiples of {m} for this model; nearest valid sizes: {', '.join(options)} "
                     "(resize or crop the video)")


def to_frames(frames: Any) -> Tensor:
    """Validate frames [T, H, W, 3] (torch or numpy; float in [0, 1] or uint8) -> float32 tensor.

    Values slightly outside [0, 1] (rounding) are clamped; far outside is an error (frames in
    [0, 255] or [-1, 1] by mistake). The NaN and range checks sync once per call, not per frame.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.array(frames))  # copy: the caller may reuse its buffer
    if not isinstance(frames, Tensor):
        raise TypeError(f"frames must be a torch.Tensor or numpy array [T, H, W, 3], "
                        f"got {type(frames).__name__}")
    shape = tuple(frames.shape)
    if frames.ndim != 4:
        hint = " (one frame? add a leading axis: frames[None])" if frames.ndim == 3 else ""
        raise ValueError(f"frames must have 4 dims [T, H, W, 3] (ComfyUI IMAGE layout), got shape "
                         f"{shape}{hint}")
    if shape[-1] != 3:
        hint = " (channels first? permute [T, 3, H, W] to [T, H, W, 3])" if shape[1] == 3 else ""
        raise ValueError(f"frames must be [T, H, W, 3] with 3 RGB channels last, got shape {shape}{hint}")
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255.0
    elif frames.is_floating_point():
        frames = frames.float()
    else:
        raise TypeError(f"frames dtype {frames.dtype} is not supported; expected float in [0, 1] or uint8")
    if frames.shape[0] == 0:
        return frames
    if not bool(torch.isfinite(frames).all()):
        raise ValueError("frames contain NaN or Inf values")
    lo, hi = frames.aminmax()
    if lo < -0.01 or hi > 1.01:
        raise ValueError(f"frame values must be in [0, 1], got min {float(lo):.3g}, max {float(hi):.3g} "
                         "(uint8 frames are accepted as is; divide float [0, 255] frames by 255)")
    return frames.clamp(0.0, 1.0)


def pad_tail(frames: Tensor, multiple: int) -> Tensor:
    """frames [T, ...] padded to a multiple of `multiple` frames by repeating the last one: the
    STLE takes whole latent frames (4 video frames); callers trim the output back to T."""
    pad = -frames.shape[0] % multiple
    return torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])]) if pad else frames


def read_prompts(model, text_encoder, prompts: Sequence[str]) -> dict[str, Reading] | None:
    """Which edit of the model's closed vocabulary each prompt is read as
    (`StreamEditModel.read_prompt`); None for a model without one, which reads every prompt as
    it is. Each prompt is encoded alone (as the editor encodes it), one host sync each."""
    vocabulary = getattr(model, "vocabulary", None)
    if vocabulary is None:
        return None
    vectors = vocabulary.wording_vectors(text_encoder)
    return {p: model.read_prompt(text_encoder.encode([check_prompt(p)]), vectors)[0] for p in prompts}


def unknown_prompts(model, readings: dict[str, Reading] | None) -> list[str]:
    """One message per prompt that the model's vocabulary does not know (`Reading.known` false),
    naming the edit it will be read as and the edits it knows; [] for a model without one."""
    if not readings:
        return []
    edits = ", ".join(e for e in model.vocabulary.edits if e != NO_EDIT)
    return [f"{p!r} is not an edit this model knows; it will be edited as the nearest, {r.edit}. "
            f"It knows: {edits}, and no edit ('leave it as it is')" for p, r in readings.items() if not r.known]


def describe_prompts(model, text_encoder, prompts: Sequence[str],
                     strict: str | None = None) -> tuple[list[str], list[str]]:
    """What the CLI and the nodes tell a user before an edit: (warnings for prompts the model
    does not know, "'p' is read as sepia (distance ...)" lines); both empty for a model without a
    vocabulary. With `strict` (how the user turns it off), an unknown prompt is a ValueError."""
    readings = read_prompts(model, text_encoder, prompts)
    warnings = unknown_prompts(model, readings)
    if strict and warnings:
        raise ValueError(f"{warnings[0]} ({strict})")
    return warnings, [f"{p!r} is read as {r}" for p, r in (readings or {}).items()]


def map_leaves(obj: Any, fn: Callable[[Any], Any], leaf: type = Tensor) -> Any:
    """`obj` (nested dicts, lists and tuples, as state dicts are) with `fn` applied to every
    instance of `leaf` in it; everything else is kept as it is."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_leaves(v, fn, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_leaves(v, fn, leaf) for v in obj)
    return obj


def _clone(obj: Any) -> Any:
    """Deep copy of nested dicts/lists of tensors (snapshots must not share storage)."""
    return map_leaves(obj, Tensor.clone)


# --- the editor ----------------------------------------------------------------------------
class StreamEditor:
    """Edits one video stream with one model; see the module docstring.

    model: a `StreamEditModel` (its device and dtype are used). text_encoder: anything with
    `encode(list[str]) -> TextEmbedding` and `null(batch)` (a `TextEnsemble`). prompt: one
    prompt, or a `PromptSchedule` (prompts switched at given frames of the stream). steps,
    cfg_scale, window_min, window_max default to the model's `SamplerConfig`.
    """

    def __init__(self, model, text_encoder, prompt: str | PromptSchedule, *, seed: int = 0,
                 steps: int | None = None, cfg_scale: float | None = None,
                 window_min: int | None = None, window_max: int | None = None,
                 attention: str | None = None) -> None:
        schedule = prompt if isinstance(prompt, PromptSchedule) else None
        prompt = schedule.first if schedule is not None else check_prompt(prompt)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        check = getattr(text_encoder, "check_compatible", None)
        if check is not None:
            check(model.config)
        overrides = dict(steps=steps, cfg_scale=cfg_scale, window_min=window_min, window_max=window_max)
        self.sampler_config = dataclasses.replace(
            model.config.sampler, **{k: v for k, v in overrides.items() if v is not None})
        self.model = model
        self.text_encoder = text_encoder
        self.seed = seed
        self.sampler = StreamSampler(model, self.sampler_config, seed=seed, attention=attention)
        self.device = model.device
        self._tstride = model.config.temporal_stride  # video frames per latent frame (4)
        self._texts: dict[str, TextEmbedding] = {}  # prompt -> embedding on the device
        self._no_edit: dict[str, bool] = {}  # prompt -> read as "no edit" by the model's vocabulary
        self._null: TextEmbedding | None = None
        self._enc_cache = model.stle.new_cache()
        self._dec_cache = model.stle.new_cache()
        self._state = self.sampler.new_state()
        self._prompt = prompt
        self._target: str | None = None  # prompt being blended in, if a transition runs
        self._switch_start = 0  # forward count at which the transition began
        self._switch_len = 1  # its length in forwards (= latent frames)
        self._schedule: PromptSchedule | None = None
        self._reset_counters()
        self._embed(prompt)  # a prompt or encoder the model cannot use fails here, not mid-stream
        if schedule is not None:
            self.set_schedule(schedule)

    def _reset_counters(self) -> None:
        self._pending = torch.zeros(0, 0, 0, 3, device=self.device)  # < 4 frames waiting
        self._frame_size: tuple[int, int] | None = None
        self._frames_in = 0
        self._frames_out = 0
        self._forwards = 0

    # -- public API --

    @property
    def prompt(self) -> str:
        """The prompt the stream is converging to (the target during a transition)."""
        return self._target if self._target is not None else self._prompt

    @property
    def frames_in(self) -> int:
        return self._frames_in

    @property
    def frames_out(self) -> int:
        return self._frames_out

    @property
    def warmup_frames(self) -> int:
        """Video frames fed before the first edited frame comes out."""
        return (self.sampler_config.steps - 1) * self.model.config.temporal_stride

    def feed(self, frames: Any) -> Tensor:
        """frames [T, H, W, 3] float in [0, 1] (or uint8) -> the edited frames ready now,
        [T', H, W, 3] float32 on the CPU (T' = 0 during warm-up)."""
        with torch.inference_mode():
            x = to_frames(frames).to(self.device)
            if x.shape[0] == 0:
                return self._emit([])
            self._check_size(x.shape[1], x.shape[2])
            self._frames_in += x.shape[0]
            x = torch.cat([self._pending, x]) if self._pending.shape[0] else x
            n_full = x.shape[0] // self._tstride * self._tstride
            outs = [self._process(x[i:i + self._tstride]) for i in range(0, n_full, self._tstride)]
            self._pending = x[n_full:].clone()
            return self._emit(outs)

    def flush(self, progress: Callable[[], None] | None = None) -> Tensor:
        """End the stream: process the tail (padded by repeating the last frame), drain the frames
        in flight, return the rest of the output trimmed to the frames fed, then `reset()`.
        `progress()` is called after each forward (the tail's, then one per drain step: steps - 1
        once a frame is in flight) and may raise to interrupt (the stream is then left half-flushed)."""
        with torch.inference_mode():
            outs = []
            if self._pending.shape[0]:
                outs.append(self._process(pad_tail(self._pending, self._tstride)))
                self._pending = self._pending[:0]
                if progress is not None:
                    progress()
            while self._state.n_inflight:
                outs.append(self._decode(self.sampler.drain(self._state, *self._texts_for_step())))
                if progress is not None:
                    progress()
            out = self._emit(outs)
        self.reset()
        return out

    def set_prompt(self, prompt: str, transition_frames: int = 0) -> None:
        """Switch to `prompt` from the next latent frame on; with transition_frames > 0 the text
        embeddings are blended over ceil(transition_frames / 4) latent frames. The history
        window drops to window_min (frames edited with the old prompt would hold it back).
        Replaces a schedule, if one was set."""
        check_prompt(prompt)
        if not isinstance(transition_frames, int) or transition_frames < 0:
            raise ValueError(f"transition_frames must be an int >= 0, got {transition_frames!r}")
        self._schedule = None
        self._switch(prompt, transition_frames)

    @property
    def schedule(self) -> PromptSchedule | None:
        return self._schedule

    def set_schedule(self, schedule: PromptSchedule) -> None:
        """Follow `schedule` from the next latent frame on: each latent frame is edited with the
        prompt the schedule names at its last video frame (frames count from the stream's start),
        a change blended in over the schedule's transition_frames. Every prompt is encoded now,
        so a bad one fails here and not mid-stream."""
        if not isinstance(schedule, PromptSchedule):
            raise TypeError(f"expected a PromptSchedule, got {type(schedule).__name__}")
        for prompt in schedule.prompts:
            self._embed(prompt, keep=schedule.prompts)
        self._schedule = schedule

    def _switch(self, prompt: str, transition_frames: int) -> None:
        if prompt == self.prompt:
            return
        self._embed(prompt)  # encode now: a bad prompt/encoder fails here, not mid-stream
        n = math.ceil(transition_frames / self.model.config.temporal_stride)
        if n == 0:
            self._prompt, self._target = prompt, None
        else:
            if self._target is not None:  # a new switch during a transition starts from the target
                self._prompt = self._target
            self._target, self._switch_start, self._switch_len = prompt, self._forwards, n
        with torch.inference_mode():
            self.sampler.shrink(self._state)

    def _follow_schedule(self) -> None:
        """Before a source latent frame enters: switch to the prompt the schedule names at its
        last video frame."""
        if self._schedule is not None:
            frame = (self._state.next_index + 1) * self._tstride - 1
            self._switch(self._schedule.prompt_at(frame), self._schedule.transition_frames)

    # latent-level entry points (ComfyUI's latent nodes run the STLE themselves)
    @property
    def stream_state(self):
        """The sampler's `StreamState` (read it; `next_index` is the next latent frame's index)."""
        return self._state

    def step_latent(self, src: Tensor) -> Tensor | None:
        """One sampler step on a source latent [C, h, w] with the editor's prompt (and running
        transition); returns the edited latent [C, h, w] float32 or None during warm-up."""
        with torch.inference_mode():
            self._follow_schedule()
            return self.sampler.step(self._state, src, *self._texts_for_step())

    def drain_latent(self) -> Tensor | None:
        """One flush step: the next edited latent still in flight, or None when none is left."""
        with torch.inference_mode():
            if self._state.n_inflight == 0:
                return None
            return self.sampler.drain(self._state, *self._texts_for_step())

    def reset(self) -> None:
        """Start a new stream (same prompt or schedule, seed and settings); buffers are kept
        and reused."""
        if self._target is not None:
            self._prompt, self._target = self._target, None
        if self._schedule is not None:  # a new stream starts at the schedule's frame 0
            self._prompt = self._schedule.first
        with torch.inference_mode():
            self._enc_cache.reset()
            self._dec_cache.reset()
            self._state.reset(self.sampler_config.window_min)
        self._reset_counters()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream elsewhere (tensors are copies)."""
        return _clone({
            "version": _STATE_VERSION,
            "settings": self._settings(),
            "enc_cache": self._enc_cache.state_dict(),
            "dec_cache": self._dec_cache.state_dict(),
            "stream": self._state.state_dict(),
            "pending": self._pending,
            "frame_size": self._frame_size,
            "frames_in": self._frames_in,
            "frames_out": self._frames_out,
            "forwards": self._forwards,
            "prompt": self._prompt,
            "target": self._target,
            "switch_start": self._switch_start,
            "switch_len": self._switch_len,
            "schedule": self._schedule,  # frozen: shared, not copied
        })

    def load_state_dict(self, d: dict) -> None:
        if not isinstance(d, dict):
            raise TypeError(f"StreamEditor state must be a dict, got {type(d).__name__}")
        if d.get("version") != _STATE_VERSION:
            raise ValueError(f"not a StreamEditor state of version {_STATE_VERSION}: "
                             f"version {d.get('version')!r}")
        if d["settings"] != self._settings():
            raise ValueError(f"editor state was saved with settings {d['settings']}, "
                             f"this editor has {self._settings()}")
        d = _clone(d)
        with torch.inference_mode():
            self._enc_cache.load_state_dict(d["enc_cache"])
            self._dec_cache.load_state_dict(d["dec_cache"])
            self._state.load_state_dict(d["stream"])
            self._pending = d["pending"].to(self.device)
        self._frame_size = None if d["frame_size"] is None else tuple(d["frame_size"])
        self._frames_in, self._frames_out = d["frames_in"], d["frames_out"]
        self._forwards = d["forwards"]
        self._prompt, self._target = d["prompt"], d["target"]
        self._switch_start, self._switch_len = d["switch_start"], d["switch_len"]
        self._schedule = d["schedule"]

    # -- internals --

    def _settings(self) -> dict:
        return {"seed": self.seed, **dataclasses.asdict(self.sampler_config)}

    def _check_size(self, height: int, width: int) -> None:
        if self._frame_size is None:
            check_frame_size(self.model.config, height, width)
            self._frame_size = (height, width)
        elif self._frame_size != (height, width):
            h0, w0 = self._frame_size
            raise ValueError(f"frame size changed mid-stream from {h0} x {w0} to {height} x {width} "
                             "(height x width); reset() the editor (chunk_index 0) to start a new stream")

    def _embed(self, prompt: str, keep: tuple[str, ...] = ()) -> TextEmbedding:
        emb = self._texts.get(prompt)
        if emb is None:
            emb = self.text_encoder.encode([prompt])
            if not isinstance(emb, TextEmbedding):
                raise TypeError(f"text encoder returned {type(emb).__name__}, expected a TextEmbedding")
            members = self.model.config.dit.text_members
            dims = [tuple(s.shape[1:]) for s in emb.states]
            if dims != [(m.max_tokens, m.dim) for m in members]:
                raise ValueError(f"text encoder gives token states {dims} (tokens, dim) per member, "
                                 f"the model expects {[(m.max_tokens, m.dim) for m in members]}; "
                                 "use the text ensemble the model was trained with")
            # A model with a closed vocabulary passes the source through for a prompt it reads as
            # "no edit" (one host sync, once per prompt).
            readings = read_prompts(self.model, self.text_encoder, [prompt])
            self._no_edit[prompt] = readings is not None and readings[prompt].edit == NO_EDIT
            emb = emb.to(self.device, self.model.dtype)
            # Keep only the prompts in use: a long session of prompt switches stays bounded.
            in_use = {self._prompt, self._target, *keep, *(self._schedule.prompts if self._schedule else ())}
            self._texts = {p: e for p, e in self._texts.items() if p in in_use}
            self._no_edit = {p: e for p, e in self._no_edit.items() if p in in_use or p == prompt}
            self._texts[prompt] = emb
        return emb

    def _texts_for_step(self) -> tuple[TextEmbedding, TextEmbedding | None, float]:
        """(text, null_text, identity) for the next forward (identity: how much of it is "no
        edit", `StreamSampler.step`); advances a running prompt transition."""
        self._forwards += 1
        null = None
        if self.sampler_config.cfg_scale != 1.0:
            if self._null is None:
                self._null = self.text_encoder.null(1).to(self.device, self.model.dtype)
            null = self._null
        if self._target is not None:
            w = (self._forwards - self._switch_start) / self._switch_len
            if w < 1.0:
                text = self._embed(self._prompt).blend(self._embed(self._target), w)
                identity = (1 - w) * self._no_edit[self._prompt] + w * self._no_edit[self._target]
                return text, null, identity
            self._prompt, self._target = self._target, None
        return self._embed(self._prompt), null, float(self._no_edit[self._prompt])

    def _process(self, frames: Tensor) -> Tensor | None:
        """frames [4, H, W, 3] -> edited frames [4, H, W, 3], or None during warm-up."""
        x = frames.permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, 4, H, W]
        src = self.model.stle.encode(x, self._enc_cache, check_finite=False)  # [1, C, 1, h, w]
        self._follow_schedule()
        latent = self.sampler.step(self._state, src[0, :, 0], *self._texts_for_step())
        return self._decode(latent)

    def _decode(self, latent: Tensor | None) -> Tensor | None:
        if latent is None:
            return None
        z = latent.to(self.model.dtype)[None, :, None]  # [1, C, 1, h, w]
        out = self.model.stle.decode(z, self._dec_cache, check_finite=False)  # [1, 3, 4, H, W]
        return out[0].permute(1, 2, 3, 0)  # [4, H, W, 3]

    def _emit(self, outs: list[Tensor | None]) -> Tensor:
        """Concatenate the ready frames, trimmed to the frames fed, as float32 on the CPU."""
        ready = [o for o in outs if o is not None]
        h, w = self._frame_size or (0, 0)
        out = torch.cat(ready) if ready else torch.zeros(0, h, w, 3, device=self.device)
        out = out[:max(0, self._frames_in - self._frames_out)]
        self._frames_out += out.shape[0]
        return out.float().cpu()
