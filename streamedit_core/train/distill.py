"""Hierarchical Progressive Distillation (after Salimans & Ho, https://arxiv.org/abs/2202.00512,
and StreamDiT's segment-wise distillation, https://arxiv.org/abs/2507.03745).

Round r halves the steps: the teacher runs N steps (the first teacher with CFG), the student
learns to cover two teacher steps with one, CFG-free (the guidance is folded into it), and
then becomes the teacher of the next round: N -> N/2 -> ... -> 6. Segment-wise: every
in-flight chunk of an ASW window sits on its own level of the student's grid, so one student
forward advances all chunks at once, as the stream sampler does (NFE = number of chunks).
The student's grid is every other level of the teacher's `flow_timesteps` grid.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..stream.sampler import flow_timesteps, velocity
from ..types import TextEmbedding


def segment_levels(t_draw: Tensor, teacher_steps: int, shift: float) -> tuple[Tensor, Tensor, Tensor]:
    """Snap a window's drawn levels t_draw [B, T] (0 = history) onto the student's grid.

    Returns (t_a, t_mid, t_c) [B, T]: the student step t_a -> t_c and the teacher's level in
    between; history frames stay at 0 in all three.
    """
    t_grid = flow_timesteps(teacher_steps, shift).to(t_draw.device)  # [N + 1], 1 -> 0
    s_grid = t_grid[::2]  # [N/2 + 1]
    student_steps = teacher_steps // 2
    # index of the student level at or just above t_draw (monotone: chunk order is kept)
    a = (s_grid[1:] >= t_draw.unsqueeze(-1)).sum(-1).clamp(max=student_steps - 1)
    hist = t_draw == 0
    zero = torch.zeros((), device=t_draw.device)
    return (torch.where(hist, zero, s_grid[a]), torch.where(hist, zero, t_grid[2 * a + 1]),
            torch.where(hist, zero, s_grid[a + 1]))


@torch.no_grad()
def teacher_velocity(teacher: nn.Module, x_a: Tensor, t_a: Tensor, t_m: Tensor, t_c: Tensor,
                     cond: Tensor, text: TextEmbedding, null_text: TextEmbedding,
                     cfg_scale: float) -> Tensor:
    """The velocity that takes x_a [B, C, T, h, w] to where two teacher Euler steps (with CFG
    when cfg_scale != 1) land: (x_c - x_a) / (t_c - t_a) per frame; 0 on history frames."""
    view = lambda t: t.view(t.shape[0], 1, t.shape[1], 1, 1)  # noqa: E731
    v1 = velocity(teacher, x_a, t_a, cond, text, null_text, cfg_scale)
    x_m = x_a + view(t_m - t_a) * v1
    v2 = velocity(teacher, x_m, t_m, cond, text, null_text, cfg_scale)
    x_c = x_m + view(t_c - t_m) * v2
    dt = t_c - t_a
    return (x_c - x_a) / view(torch.where(dt == 0, -1.0, dt))
