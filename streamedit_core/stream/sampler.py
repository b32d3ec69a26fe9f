"""Rectified-flow samplers: the offline N-step teacher and the streaming sampler.

Flow convention (docs/internals.md): x_t = (1 - t) * x0 + t * eps, the DiT predicts the
velocity v = eps - x0, and an Euler step from t_a to t_b is x + (t_b - t_a) * v.

Streaming (after StreamDiT, https://arxiv.org/abs/2507.03745): N = `steps` latent frames are
in flight at staggered levels t_0 = 1 > t_1 > ... > t_{N-1}; one DiT forward over the window
[clean history | in-flight] moves every in-flight frame one level down (each with its own dt)
and the frame reaching t_N = 0 leaves as an edited latent and joins the history. A new frame
enters at t_0 = 1 with every source latent, so in steady state one forward yields one edited
latent frame (NFE per output latent frame = 1). The first N-1 source latents yield nothing
(warm-up); `flush` drains the N-1 frames still in flight with N-1 more forwards.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn

from .buffer import StreamState
from ..config import DiTConfig, SamplerConfig
from ..types import TextEmbedding

# Content counts as static (the window may grow) when the relative latent distance between
# consecutive source latents is below this fraction of the scene-cut threshold.
STATIC_RATIO = 0.2


def flow_timesteps(steps: int, shift: float) -> Tensor:
    """Noise levels [steps + 1] float32 from 1.0 down to 0.0, shifted t' = s*t / (1 + (s-1)*t).

    shift > 1 spends more of the steps at high noise (where the layout is decided), as in
    SD3 (https://arxiv.org/abs/2403.03206, eq. 23); shift = 1 is a uniform grid.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    t = shift * t / (1.0 + (shift - 1.0) * t)
    return t.to(torch.float32)


def noise_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for latent frame `index` of a stream seeded with `seed`."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def frame_noise(seed: int, index: int, shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    """Gaussian noise float32 for one latent frame, the same whatever frames came before."""
    g = torch.Generator(device=device).manual_seed(noise_seed(seed, index))
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32)


def velocity(dit: nn.Module, x: Tensor, t: Tensor, cond: Tensor, text: TextEmbedding,
             null_text: TextEmbedding | None = None, cfg_scale: float = 1.0,
             attention: str | None = None) -> Tensor:
    """One DiT evaluation, with classifier-free guidance when cfg_scale != 1.

    x, cond [B, C, T, h, w] float32; t [B, T]; text batch B (or 1). Runs the DiT in its own
    dtype and returns the velocity as float32. CFG runs cond and uncond as one batch of 2B.
    """
    dtype = next(dit.parameters()).dtype
    b = x.shape[0]
    if text.batch_size == 1 and b > 1:
        text = text.repeat(b)
    if cfg_scale != 1.0:
        if null_text is None:
            raise ValueError(f"cfg_scale={cfg_scale} needs a null (unconditional) text embedding")
        if null_text.batch_size == 1 and b > 1:
            null_text = null_text.repeat(b)
        v = dit(torch.cat([x, x]).to(dtype), torch.cat([t, t]), torch.cat([cond, cond]).to(dtype),
                TextEmbedding.cat([text, null_text]), attention=attention).float()
        v_cond, v_uncond = v[:b], v[b:]
        return v_uncond + cfg_scale * (v_cond - v_uncond)
    return dit(x.to(dtype), t, cond.to(dtype), text, attention=attention).float()


@torch.no_grad()
def sample_offline(model, source_latents: Tensor, text: TextEmbedding, steps: int,
                   shift: float = 3.0, cfg_scale: float = 1.0,
                   null_text: TextEmbedding | None = None,
                   generator: torch.Generator | None = None, attention: str | None = None) -> Tensor:
    """The teacher: edit a whole clip at once with `steps` Euler steps (NFE = steps, x2 with CFG).

    source_latents [B, C, T, h, w] (the STLE encoding of the source clip); every latent frame
    shares one noise level per step. Returns the edited latents [B, C, T, h, w] float32.
    """
    if source_latents.ndim != 5:
        raise ValueError(f"source_latents must be [B, C, T, h, w], got shape {tuple(source_latents.shape)}")
    device = source_latents.device
    ts = flow_timesteps(steps, shift).tolist()  # python floats: no sync inside the loop
    cond = source_latents.float()
    gen_device = generator.device if generator is not None else device
    x = torch.randn(cond.shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)
    text = text.to(device)
    null_text = null_text.to(device) if null_text is not None else None
    b, _, n_frames = cond.shape[:3]
    for k in range(steps):
        t = torch.full((b, n_frames), ts[k], device=device, dtype=torch.float32)
        v = velocity(model.dit, x, t, cond, text, null_text, cfg_scale, attention)
        x = x + (ts[k + 1] - ts[k]) * v
    return x


def activation_bytes_per_frame(dit_cfg: DiTConfig, latent_hw: tuple[int, int], batch: int,
                               dtype_bytes: int) -> int:
    """Rough peak activation bytes one window frame costs in a DiT forward (inference).

    Per token: the residual stream, q/k/v and the attention output (4 + 1 widths), the MLP's
    hidden before and after the activation (2 * mlp_ratio widths), two norms, and the outer
    blocks' outputs kept for the skips (depth_outer widths). Attention scores are not counted
    (fused attention does not materialise them). An estimate for capping the window, not a
    measurement.
    """
    h, w = latent_hw
    tokens = (h // dit_cfg.patch_size) * (w // dit_cfg.patch_size)
    widths = 5 + 2 * dit_cfg.mlp_ratio + 2 + dit_cfg.depth_outer
    return int(math.ceil(tokens * dit_cfg.hidden_size * widths * batch * dtype_bytes))


class StreamSampler:
    """The streaming sampler over one `StreamState` (see the module docstring).

    ASW: the history length `state.window` starts at `window_min`; a scene cut (relative
    distance between consecutive source latents > scene_cut_threshold) or a prompt change
    (`shrink`) drops it back to `window_min`; static content (distance < STATIC_RATIO x the
    threshold) grows it by one per step up to `history_cap`, which is window_max, lowered
    when needed so the whole window fits the memory budget.
    """

    def __init__(self, model, cfg: SamplerConfig, *, seed: int = 0,
                 attention: str | None = None) -> None:
        if cfg.steps < 1:
            raise ValueError(f"steps must be >= 1, got {cfg.steps}")
        if not 0 <= cfg.window_min <= cfg.window_max:
            raise ValueError(f"need 0 <= window_min <= window_max, got window_min={cfg.window_min}, "
                             f"window_max={cfg.window_max}")
        max_frames = model.config.dit.max_frames
        if cfg.window_max + cfg.steps > max_frames:
            raise ValueError(f"window_max={cfg.window_max} + steps={cfg.steps} latent frames exceed "
                             f"the DiT's max_frames={max_frames}; lower window_max or steps")
        # A model with a pixel refiner (refiner.py) corrects each latent frame the sampler
        # releases; without one (or a stand-in with no `refiner`) the DiT's latent leaves as is.
        self.refine = model.refine if getattr(model, "refiner", None) is not None else None
        self.dit = model.dit
        self.dit_cfg = model.config.dit
        self.cfg = cfg
        self.seed = seed
        self.attention = attention
        self.device = model.device
        self.dtype = model.dtype
        # Levels in increasing t (t_N = 0 first): in-flight slots in time order sit at
        # increasing t, so their levels are one contiguous slice of this (no index transfer).
        self._t_rev = flow_timesteps(cfg.steps, cfg.shift).flip(0).to(self.device)

    def new_state(self) -> StreamState:
        state = StreamState(history_max=self.cfg.window_max, steps=self.cfg.steps)
        state.reset(self.cfg.window_min)
        return state

    def history_cap(self, latent_hw: tuple[int, int]) -> int:
        """History frames allowed for this latent size: window_max, capped by the memory budget."""
        if self.cfg.memory_budget_mb <= 0:
            return self.cfg.window_max
        batch = 1 if self.cfg.cfg_scale == 1.0 else 2
        per_frame = activation_bytes_per_frame(self.dit_cfg, latent_hw, batch, self.dtype.itemsize)
        frames = int(self.cfg.memory_budget_mb * 2**20 // per_frame)
        cap = min(self.cfg.window_max, frames - self.cfg.steps)
        if cap < self.cfg.window_min:
            need = (self.cfg.window_min + self.cfg.steps) * per_frame / 2**20
            raise ValueError(f"memory_budget_mb={self.cfg.memory_budget_mb} is too small for latents of "
                             f"{latent_hw[0]}x{latent_hw[1]}: window_min={self.cfg.window_min} + "
                             f"steps={self.cfg.steps} frames need about {need:.1f} MB")
        return cap

    def shrink(self, state: StreamState) -> None:
        """Prompt change (or scene cut): history back to window_min frames."""
        state.window = self.cfg.window_min
        state.trim_history(self.cfg.window_min)

    def step(self, state: StreamState, src: Tensor, text: TextEmbedding,
             null_text: TextEmbedding | None = None, identity: float = 0.0) -> Tensor | None:
        """Admit the source latent src [C, h, w] and run one forward.

        Returns the edited latent [C, h, w] float32 that left the buffer, or None in warm-up.
        `identity` in [0, 1]: how much of the step heads for the source itself instead of the
        DiT's edit (1: no edit, the DiT does not run, and the frames leave as their sources;
        between: a prompt transition to or from "no edit").
        """
        src = src.to(device=self.device, dtype=torch.float32)
        if not state.allocated or (state.next_index == 0 and tuple(src.shape) != state.latent_shape):
            state.allocate(tuple(src.shape), self.device)  # a new stream may have a new size
        elif tuple(src.shape) != state.latent_shape:
            raise ValueError(f"latent size changed mid-stream: {tuple(state.latent_shape)} -> "
                             f"{tuple(src.shape)}; reset the stream first")
        self._adapt_window(state, src)
        state.admit(frame_noise(self.seed, state.next_index, tuple(src.shape), self.device), src)
        state.next_index += 1
        return self._advance(state, text, null_text, identity)

    def drain(self, state: StreamState, text: TextEmbedding,
              null_text: TextEmbedding | None = None, identity: float = 0.0) -> Tensor | None:
        """One forward with no new frame (flush). Returns the released latent, or None."""
        if state.n_inflight == 0:
            return None
        return self._advance(state, text, null_text, identity)

    # --- internals -------------------------------------------------------------------------
    def _adapt_window(self, state: StreamState, src: Tensor) -> None:
        cap = self.history_cap(tuple(src.shape[-2:]))
        if state.has_prev:
            rel = (src - state.prev_src).norm() / (0.5 * (src.norm() + state.prev_src.norm()) + 1e-6)
            thr = self.cfg.scene_cut_threshold
            # The window length sets the DiT input's shape, so the host must know it: this is
            # the one sync per latent frame (4 video frames), one small integer. Both tests
            # are folded into that integer: 2 = scene cut, 1 = static, 0 = neither.
            regime = int((rel > thr).int() * 2 + (rel < thr * STATIC_RATIO).int())
            if regime == 2:
                self.shrink(state)
            elif regime == 1:
                state.window = min(state.window + 1, cap)
        state.window = min(state.window, cap)
        state.trim_history(state.window)
        state.prev_src.copy_(src)
        state.has_prev = 1

    def _advance(self, state: StreamState, text: TextEmbedding,
                 null_text: TextEmbedding | None, identity: float = 0.0) -> Tensor | None:
        steps, hl, n = self.cfg.steps, state.history_len, state.n_inflight
        # 1. The window in time order: history (t = 0), then in-flight (oldest = least noisy).
        x = torch.cat([state.history[:hl], state.inflight[:n]])  # [T, C, h, w]
        cond = torch.cat([state.history_src[:hl], state.inflight_src[:n]])
        x = x.permute(1, 0, 2, 3).unsqueeze(0)  # [1, C, T, h, w]
        cond = cond.permute(1, 0, 2, 3).unsqueeze(0)
        # 2. Noise level of every frame: slot j is at level oldest_level - j.
        first = steps - state.oldest_level
        t_now = self._t_rev[first:first + n]  # [n]
        t_next = self._t_rev[first - 1:first - 1 + n]
        t = torch.cat([t_now.new_zeros(hl), t_now]).unsqueeze(0)  # [1, T]
        # 3. One forward, then an Euler step per in-flight frame with its own dt. "No edit" is the
        # velocity whose clean frame is the source: v = (x_t - src) / t (every in-flight t > 0).
        if identity < 1:
            v = velocity(self.dit, x, t, cond, text, null_text, self.cfg.cfg_scale, self.attention)
            v = v[0, :, hl:].permute(1, 0, 2, 3)  # [n, C, h, w]
        if identity > 0:
            inflight = state.inflight[:n]
            v_id = (inflight - state.inflight_src[:n]) / t_now.view(n, 1, 1, 1)
            v = v_id if identity >= 1 else torch.lerp(v, v_id, identity)
        state.inflight[:n].add_((t_next - t_now).view(n, 1, 1, 1) * v)
        state.oldest_level += 1
        # 4. The frame at t = 0 leaves and becomes history. The history keeps the DiT's own
        # output (what it was trained to read); the refiner corrects only what is released.
        if state.oldest_level < steps:
            return None
        latent, src = state.pop_oldest()
        state.push_history(latent, src)
        if self.refine is None or identity >= 1:
            return latent
        return self.refine(latent[None, :, None], src[None, :, None], text)[0, :, 0].float()
