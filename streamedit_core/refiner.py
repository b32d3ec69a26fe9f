"""The pixel refiner: a small text-conditioned CNN that corrects each edited latent frame in
pixel space (`RefinerConfig`; the shipped demo model has one, fitted by train_demo; no preset does).

The DiT edits 8x8-pixel tokens. An edit that is a nonlinear function of a few neighbouring
pixels (a pencil sketch: Sobel edges on white paper; a strong colour tint) is then a function
of hundreds of latent values per token that the demo DiT does not learn, while two 3x3
convolutions on the pixels compute it. So every latent frame the sampler releases is viewed
as pixels through the STLE's linear path, corrected by this net from the edited and the
source frames (and, where `RefinerConfig.prompt`, the DiT's pooled prompt), and coded back (`StreamEditModel.refine`). It works frame by
frame and sees no noise level, so it adds no stream state and runs once per latent frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RefinerConfig


class PixelRefiner(nn.Module):
    """frames edited, source [N, 3, H, W] in [0, 1] and the pooled prompt [N, D] (where
    `cfg.prompt`) -> the refined frames [N, 3, H, W] (unclamped). Its output layer starts at zero: the untrained
    refiner returns the edited frames unchanged."""

    def __init__(self, cfg: RefinerConfig, text_dim: int, *, ops=None, device=None, dtype=None) -> None:
        super().__init__()
        ops = ops if ops is not None else nn
        kw = dict(device=device, dtype=dtype)
        w = cfg.width
        # Two 3x3 layers (a 5x5 view: edges, local contrast), then per-pixel layers (the
        # nonlinear colour maps). Each is modulated by the prompt (FiLM).
        self.convs = nn.ModuleList([ops.Conv2d(6, w, 3, padding=1, **kw), ops.Conv2d(w, w, 3, padding=1, **kw),
                                    ops.Conv2d(w, w, 1, **kw), ops.Conv2d(w, w, 1, **kw)])
        self.film = (nn.Sequential(ops.Linear(text_dim, cfg.film_hidden, **kw), nn.SiLU(),
                                   ops.Linear(cfg.film_hidden, 2 * w * len(self.convs), **kw))
                     if cfg.prompt else None)
        self.out = ops.Conv2d(w, 3, 1, **kw)
        for layer in (self.film[-1], self.out) if self.film is not None else (self.out,):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, edited: Tensor, source: Tensor, pooled: Tensor | None) -> Tensor:
        """pooled: [N, D], or None for a refiner that does not read the prompt."""
        mod = None
        if self.film is not None:
            # Unit-RMS prompt, as the DiT's edit map reads it: the pooled vector's scale is
            # the DiT's business, not the refiner's.
            mod = self.film(F.layer_norm(pooled, pooled.shape[-1:])).chunk(2 * len(self.convs), -1)
        h = torch.cat([edited, source], 1) * 2 - 1  # [N, 6, H, W] in about [-1, 1]
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if mod is not None:
                h = h * (1 + mod[2 * i][..., None, None]) + mod[2 * i + 1][..., None, None]
            h = F.gelu(h)
        return edited + self.out(h)
