"""The pixel refiner: a small prompt-conditioned CNN that corrects each edited latent frame in
pixel space (`RefinerConfig`, width 0 = none; no preset has one, the shipped demo model does).

Every latent frame the sampler releases is viewed as pixels through the STLE's linear path,
corrected by this net from the edited and the source frames (and, where `RefinerConfig.prompt`,
a view of the prompt: `StreamEditModel.refiner_prompt`), and coded back
(`StreamEditModel.refine`). Its 3x3 convolutions compute functions of a few neighbouring pixels
(edges, local contrast) that span several 8x8-pixel latent tokens; its per-pixel layers, nonlinear
colour maps; and with `grade_knots` a colour grade read from the prompt (`colour_grade`) is
blended in per pixel. It works frame by frame and sees no noise level, so it adds no stream
state and runs once per latent frame. Why the demo model has one: docs/demo-model.md, The pixel
refiner.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RefinerConfig


class PixelRefiner(nn.Module):
    """frames edited, source [N, 3, H, W] in [0, 1] and the prompt's view [N, D] (where
    `cfg.prompt`) -> the refined frames [N, 3, H, W] (unclamped). Its output layer starts at zero: the untrained
    refiner returns the edited frames unchanged. With `cfg.grade_knots`, a colour grade of the
    source read from the prompt (`colour_grade`) is one more input and is blended in per pixel."""

    def __init__(self, cfg: RefinerConfig, text_dim: int, *, ops=None, device=None, dtype=None) -> None:
        super().__init__()
        ops = ops if ops is not None else nn
        kw = dict(device=device, dtype=dtype)
        w = cfg.width
        self.knots = cfg.grade_knots
        # Two 3x3 layers (a 5x5 view: edges, local contrast), then per-pixel layers (the
        # nonlinear colour maps). Each is modulated by the prompt (FiLM). With a colour grade
        # the convolutions also see the graded source, and the output layer gains the weight
        # that blends the grade in.
        inputs, outputs = (9, 4) if self.knots else (6, 3)
        self.convs = nn.ModuleList([ops.Conv2d(inputs, w, 3, padding=1, **kw), ops.Conv2d(w, w, 3, padding=1, **kw),
                                    ops.Conv2d(w, w, 1, **kw), ops.Conv2d(w, w, 1, **kw)])
        self.film = (nn.Sequential(ops.Linear(text_dim, cfg.film_hidden, **kw), nn.SiLU(),
                                   ops.Linear(cfg.film_hidden, 2 * w * len(self.convs), **kw))
                     if cfg.prompt else None)
        # From the FiLM MLP's hidden layer: a 3x3 colour matrix and offset (as changes from the
        # identity) and the change of each channel's curve at its knots from the diagonal.
        self.grade = ops.Linear(cfg.film_hidden, 12 + 3 * self.knots, **kw) if self.knots else None
        self.out = ops.Conv2d(w, outputs, 1, **kw)
        for layer in (self.film[-1], self.grade, self.out) if self.film is not None else (self.out,):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, edited: Tensor, source: Tensor, pooled: Tensor | None) -> Tensor:
        """pooled: [N, D], or None for a refiner that does not read the prompt."""
        mod, inputs = None, [edited, source]
        if self.film is not None:
            # Unit-RMS prompt, as the DiT's edit map reads it: the scale of the DiT's pooled
            # vector (or of a member's states) is not the refiner's business.
            hidden = self.film[:2](F.layer_norm(pooled, pooled.shape[-1:]))  # [N, film_hidden]
            mod = self.film[2](hidden).chunk(2 * len(self.convs), -1)
            if self.grade is not None:
                graded = colour_grade(source, self.grade(hidden), self.knots)
                inputs.append(graded)
        h = torch.cat(inputs, 1) * 2 - 1  # [N, 6 or 9, H, W] in about [-1, 1]
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if mod is not None:
                h = h * (1 + mod[2 * i][..., None, None]) + mod[2 * i + 1][..., None, None]
            h = F.gelu(h)
        out = self.out(h)  # [N, 3 or 4, H, W]
        if self.grade is None:
            return edited + out
        # The weight is unbounded and starts at 0 (so does the rest of the output): the grade
        # gets a gradient from the first step, and blends in only where it helps.
        return edited + out[:, :3] + out[:, 3:] * (graded - edited)


def colour_grade(frames: Tensor, params: Tensor, knots: int) -> Tensor:
    """frames [N, 3, H, W] in [0, 1], params [N, 12 + 3 * knots] -> graded frames [N, 3, H, W].

    The colour matrix (identity + params[:, :9]) and offset (params[:, 9:12]) mix the channels;
    each channel then goes through its own piecewise-linear curve on [0, 1], `knots` evenly
    spaced values (the diagonal + the rest of params). All zeros is the identity. A global colour
    edit (a channel mix such as grayscale or sepia, a tone change such as an inversion, a tint
    or fewer levels) is one such grade."""
    n = frames.shape[0]
    eye = torch.eye(3, dtype=params.dtype, device=params.device)
    matrix = params[:, :9].view(n, 3, 3) + eye
    mixed = torch.einsum("ncd,ndhw->nchw", matrix, frames) + params[:, 9:12, None, None]
    grid = torch.linspace(0, 1, knots, dtype=params.dtype, device=params.device)
    curve = params[:, 12:].view(n, 3, knots) + grid  # [N, 3, knots]: value at each knot
    pos = mixed.clamp(0, 1).flatten(2) * (knots - 1)  # [N, 3, H*W] in knot units
    left = pos.floor().clamp(max=knots - 2)
    idx = left.long()
    lo, hi = curve.gather(2, idx), curve.gather(2, idx + 1)
    return (lo + (pos - left) * (hi - lo)).view_as(frames)
