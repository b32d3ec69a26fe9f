"""ASW mixed partitions: the noise levels of a training window (after StreamDiT,
https://arxiv.org/abs/2507.03745, section 3: "mixed training" over partition schemes).

A training window of T latent frames is `history` clean frames (t = 0, the already-edited
output the stream sampler keeps) followed by N = T - history in-flight frames. The in-flight
frames are split into chunks of `chunk` consecutive frames; chunk k (0 = oldest, least noisy)
sits at level (k + u) / K on the flow schedule, K = number of chunks, u ~ U(0, 1) per sample:

  uniform    one chunk: every in-flight frame at one level (the offline teacher's case)
  chunkC     chunks of C frames, staggered (chunk1 = the stream sampler's one frame per level)
  independent  every frame at its own uniformly drawn level (diffusion-forcing style)

Levels are read off `sampler.flow_timesteps` on a fine grid, so training sees the same shifted
schedule as the samplers.
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..stream.sampler import flow_timesteps

GRID = 1000  # fine grid over the shifted schedule
_CHUNK = re.compile(r"^chunk([1-9][0-9]*)$")


def check_partition(name: str) -> None:
    if name not in ("uniform", "independent") and not _CHUNK.match(name):
        raise ValueError(f"unknown partition scheme {name!r}; expected 'uniform', 'independent' or "
                         "'chunkC' with C >= 1 (e.g. 'chunk1', 'chunk2')")


def chunk_size(name: str, n_inflight: int) -> int:
    """Frames per chunk of a scheme for a window with n_inflight in-flight frames."""
    check_partition(name)
    if name == "uniform":
        return n_inflight
    if name == "independent":
        return 1
    return min(int(_CHUNK.match(name).group(1)), n_inflight)


def levels(name: str, n_inflight: int, u: Tensor, shift: float) -> Tensor:
    """Noise levels [B, n_inflight] in (0, 1] of the in-flight frames, oldest first.

    u [B, n_inflight] uniform in [0, 1): the per-sample randomness (column 0 is used for
    chunked schemes, every column for 'independent').
    """
    grid = flow_timesteps(GRID, shift).flip(0).to(u.device)  # [GRID + 1], 0 -> 1 increasing
    if name == "independent":
        pos = u
    else:
        c = chunk_size(name, n_inflight)
        k = torch.arange(n_inflight, device=u.device) // c  # chunk of each frame
        n_chunks = math.ceil(n_inflight / c)
        pos = (k.unsqueeze(0) + u[:, :1]) / n_chunks  # [B, N]
    # index 1..GRID: never t = 0, which the DiT reads as a clean history frame
    idx = (pos * GRID).long().clamp(0, GRID - 1) + 1
    return grid[idx]


def window_levels(name: str, history: int, n_frames: int, u: Tensor, shift: float) -> Tensor:
    """t [B, n_frames] for a window: zeros for the history, then the scheme's levels."""
    if not 0 <= history < n_frames:
        raise ValueError(f"history={history} must be in [0, {n_frames - 1}] for a window of "
                         f"{n_frames} latent frames (at least one in flight)")
    t_in = levels(name, n_frames - history, u[:, : n_frames - history], shift)
    return torch.cat([t_in.new_zeros(u.shape[0], history), t_in], dim=1)
