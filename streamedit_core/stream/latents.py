"""The latent-level path, one latent frame (4 video frames) at a time: STLE encode, the streaming
sampler, STLE decode, each as its own call, as ComfyUI's three latent nodes run them in one job.
Each is the loop `StreamEditor.feed` runs, with the same calls in the same order, so the frames
equal the editor's whatever the chunking.

`progress(done, total)` is called before each latent frame and once at the end; it may raise to
interrupt (ComfyUI's interrupt arrives that way).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..model.stle import CausalCache
from .editor import StreamEditor, check_frame_size, pad_tail, to_frames

Progress = Callable[[int, int], None] | None


def _report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _one_video(latents: Tensor, what: str) -> None:
    if latents.ndim != 5 or latents.shape[0] != 1:
        raise ValueError(f"{what} takes the latents of one video [1, C, t, h, w], got shape "
                         f"{list(latents.shape)}")


@torch.inference_mode()
def encode_frames(model, frames, cache: CausalCache | None = None, *, progress: Progress = None) -> Tensor:
    """frames [T, H, W, 3] float in [0, 1] (or uint8) -> latents [1, C, t, h, w] float32 on the CPU.

    cache None: a whole clip from its start, its tail padded to whole latent frames as
    `StreamEditor.flush` pads it (t = ceil(T / 4)). With a cache (a stream's, continued across
    calls): T must be a multiple of 4 (t = T / 4).
    """
    x = to_frames(frames).to(model.device)  # [T, H, W, 3]
    if x.shape[0] == 0:
        raise ValueError("STLE encode got no frames")
    check_frame_size(model.config, x.shape[1], x.shape[2])
    stride = model.config.temporal_stride
    if cache is None:
        cache, x = model.stle.new_cache(), pad_tail(x, stride)
    elif x.shape[0] % stride:
        raise ValueError(f"a stream chunk must hold a multiple of {stride} frames, got {x.shape[0]}")
    n = x.shape[0] // stride
    out = []
    for i in range(n):
        _report(progress, i, n)
        chunk = x[i * stride:(i + 1) * stride].permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, 4, H, W]
        out.append(model.stle.encode(chunk, cache, check_finite=False))  # [1, C, 1, h, w]
    _report(progress, n, n)
    return torch.cat(out, dim=2).float().cpu()


@torch.inference_mode()
def sample_latents(editor: StreamEditor, latents: Tensor, *, flush: bool = False,
                   progress: Progress = None) -> Tensor:
    """Source latents [1, C, t, h, w] -> the edited latents ready now [1, C, t', h, w] float32 on
    the CPU: one sampler step per latent frame (prompts as the editor's schedule says), then,
    with `flush`, the frames still in flight."""
    _one_video(latents, "the sampler")
    n = latents.shape[2]
    total = n + (editor.sampler_config.steps - 1 if flush else 0)  # an upper bound of the drain
    src = latents.to(editor.model.device)
    out = []
    for i in range(n):
        _report(progress, i, total)
        out.append(editor.step_latent(src[0, :, i].contiguous()))  # laid out as the editor's own
    while flush and editor.stream_state.n_inflight:
        _report(progress, len(out), total)
        out.append(editor.drain_latent())
    _report(progress, total, total)
    ready = [o[:, None] for o in out if o is not None]  # [C, 1, h, w] each
    return (torch.cat(ready, dim=1)[None] if ready else latents[:, :, :0]).float().cpu()


@torch.inference_mode()
def decode_latents(model, latents: Tensor, cache: CausalCache | None = None, *,
                   progress: Progress = None) -> Tensor:
    """latents [1, C, t, h, w] -> frames [4t, H, W, 3] float32 on the CPU. cache None: a whole
    clip from its start; with a cache: a stream's, continued across calls."""
    _one_video(latents, "STLE decode")
    cache = model.stle.new_cache() if cache is None else cache
    space, n = model.config.spatial_stride, latents.shape[2]
    out = [torch.zeros(0, latents.shape[-2] * space, latents.shape[-1] * space, 3)]
    for i in range(n):
        _report(progress, i, n)
        # contiguous like StreamEditor's own latents: the same layout gives the same floats
        z = latents[:, :, i:i + 1].to(model.device, model.dtype).contiguous()  # [1, C, 1, h, w]
        frames = model.stle.decode(z, cache, check_finite=False)  # [1, 3, 4, H, W]
        out.append(frames[0].permute(1, 2, 3, 0).float().cpu())  # [4, H, W, 3]
    _report(progress, n, n)
    return torch.cat(out)
