"""The streaming state of the Adaptive Sliding Window (ASW): one dataclass, allocated once.

The window the DiT sees at each step is

    [ clean history (edited latents, t = 0) | in-flight latents at staggered noise levels ]
      oldest ...................................................................... newest

In-flight frames entered one step apart, so their levels are consecutive: slot j (time order,
oldest first) sits at level `oldest_level - j`, where level k means noise t_k of the schedule
(level 0 = pure noise, level N = clean). History keeps at most `window` frames; `window` moves
between the sampler's min and max (see `sampler.StreamSampler`).

Every tensor is preallocated to its maximum size when the latent size is first known and
updated in place, so memory does not depend on how long the stream runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# Fields saved by state_dict(); tensors are cloned so a snapshot is not changed by later steps.
_INT_FIELDS = ("history_len", "n_inflight", "oldest_level", "next_index", "window", "released",
               "has_prev")
_TENSOR_FIELDS = ("history", "history_src", "inflight", "inflight_src", "prev_src")


@dataclass
class StreamState:
    """Latents of one stream in the sampler's window. Shapes (C = latent channels):

    history      [history_max, C, h, w] float32  edited (clean) latents, time order
    history_src  [history_max, C, h, w] float32  their source latents (the DiT's condition)
    inflight     [steps, C, h, w] float32        latents being denoised, time order
    inflight_src [steps, C, h, w] float32        their source latents
    prev_src     [C, h, w] float32               the last source latent (scene-cut detection)
    """
    history_max: int
    steps: int
    history: Tensor | None = None
    history_src: Tensor | None = None
    inflight: Tensor | None = None
    inflight_src: Tensor | None = None
    prev_src: Tensor | None = None
    history_len: int = 0  # valid frames in `history`
    n_inflight: int = 0  # valid slots in `inflight`
    oldest_level: int = 0  # level of inflight[0]; slot j is at oldest_level - j
    next_index: int = 0  # latent frame index of the next source latent (seeds its noise)
    window: int = 0  # history frames currently allowed (ASW length)
    released: int = 0  # edited latents released so far
    has_prev: int = 0  # 1 once prev_src holds a latent
    _shape: tuple[int, ...] = field(default=(), repr=False)

    @property
    def allocated(self) -> bool:
        return self.history is not None

    def allocate(self, latent_shape: tuple[int, int, int], device: torch.device | str | None) -> None:
        """Allocate every buffer for latents of shape [C, h, w] (once per stream size)."""
        c, h, w = latent_shape
        kw = dict(device=device, dtype=torch.float32)
        self.history = torch.zeros(self.history_max, c, h, w, **kw)
        self.history_src = torch.zeros(self.history_max, c, h, w, **kw)
        self.inflight = torch.zeros(self.steps, c, h, w, **kw)
        self.inflight_src = torch.zeros(self.steps, c, h, w, **kw)
        self.prev_src = torch.zeros(c, h, w, **kw)
        self._shape = (c, h, w)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._shape

    def reset(self, window: int) -> None:
        """Start a new stream: counters back to zero, buffers kept (and their memory)."""
        self.history_len = self.n_inflight = self.oldest_level = 0
        self.next_index = self.released = self.has_prev = 0
        self.window = window

    # --- history ---------------------------------------------------------------------------
    def push_history(self, latent: Tensor, src: Tensor) -> None:
        """Append a released latent [C, h, w]; drop the oldest beyond `window` frames."""
        if self.window == 0:
            return
        if self.history_len >= self.window:
            self.trim_history(self.window - 1)
        self.history[self.history_len].copy_(latent)
        self.history_src[self.history_len].copy_(src)
        self.history_len += 1

    def trim_history(self, keep: int) -> None:
        """Keep the newest `keep` history frames (moved to the front, in place)."""
        keep = max(0, min(keep, self.history_len))
        drop = self.history_len - keep
        if drop and keep:
            # clone: source and destination overlap
            self.history[:keep].copy_(self.history[drop:self.history_len].clone())
            self.history_src[:keep].copy_(self.history_src[drop:self.history_len].clone())
        self.history_len = keep

    # --- in-flight -------------------------------------------------------------------------
    def levels(self) -> list[int]:
        """Noise level index of each valid in-flight slot, in time order."""
        return [self.oldest_level - j for j in range(self.n_inflight)]

    def admit(self, noise: Tensor, src: Tensor) -> None:
        """A new latent enters at level 0 (pure noise) in the newest slot."""
        assert self.n_inflight < self.steps, "in-flight buffer full: release before admitting"
        self.inflight[self.n_inflight].copy_(noise)
        self.inflight_src[self.n_inflight].copy_(src)
        if self.n_inflight == 0:
            self.oldest_level = 0
        self.n_inflight += 1

    def pop_oldest(self) -> tuple[Tensor, Tensor]:
        """Remove slot 0 (the frame that reached level N); returns (latent, src) copies."""
        latent, src = self.inflight[0].clone(), self.inflight_src[0].clone()
        n = self.n_inflight
        if n > 1:
            self.inflight[:n - 1].copy_(self.inflight[1:n].clone())
            self.inflight_src[:n - 1].copy_(self.inflight_src[1:n].clone())
        self.n_inflight -= 1
        self.oldest_level -= 1  # the new slot 0 entered one step after the old one
        self.released += 1
        return latent, src

    # --- (de)serialisation -----------------------------------------------------------------
    def state_dict(self) -> dict:
        d: dict = {k: int(getattr(self, k)) for k in _INT_FIELDS}
        d["history_max"], d["steps"] = self.history_max, self.steps
        for k in _TENSOR_FIELDS:
            t = getattr(self, k)
            d[k] = None if t is None else t.clone()
        return d

    def load_state_dict(self, d: dict) -> None:
        if (d["history_max"], d["steps"]) != (self.history_max, self.steps):
            raise ValueError(f"stream state for history_max={d['history_max']}, steps={d['steps']} "
                             f"cannot load into one with history_max={self.history_max}, "
                             f"steps={self.steps}")
        if d["history"] is None:
            self.history = self.history_src = self.inflight = self.inflight_src = None
            self.prev_src = None
            self._shape = ()
        else:
            shape = tuple(d["prev_src"].shape)
            device = d["history"].device if self.history is None else self.history.device
            if self.history is None or self._shape != shape:
                self.allocate(shape, device)  # type: ignore[arg-type]
            for k in _TENSOR_FIELDS:
                getattr(self, k).copy_(d[k])
        for k in _INT_FIELDS:
            setattr(self, k, int(d[k]))
