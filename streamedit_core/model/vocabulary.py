"""A closed vocabulary of edits: the edits a model knows, and which of them a prompt is read as.

A model with a vocabulary (`VocabularyConfig`, `ModelConfig.vocabulary`; of the shipped models
only the demo model has one) reads every prompt as the nearest of a fixed set of edits: its
refiner gets that edit's anchor, one vector per edit, instead of the prompt's own view.
The config declares the edits' names, a few of their training wordings and how a prompt is
matched (`view`: the refiner's view, `StreamEditModel.refiner_prompt`; `distance`: Euclidean
after layer norm, which is what the refiner's input goes through); this module holds the
anchors and says what each prompt was read as (`Reading`), so that a user can see it.
The anchors are built from training wordings by `train.refine.with_vocabulary`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VocabularyConfig

# The edit that is the empty prompt's view: no edit.
NO_EDIT = "none"


@dataclass(frozen=True)
class Reading:
    """How a model read one prompt: as `edit`, at `distance` from its anchor, and how far the next
    nearest edits were (`runners_up`, nearest first). Distances are Euclidean between layer-normed
    vectors of D values: 0 is the anchor's own direction, sqrt(2 D) an uncorrelated one."""
    edit: str
    distance: float
    runners_up: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:  # "sepia (distance 4.12; next: warm 6.30, grayscale 7.02)"
        after = ", ".join(f"{e} {d:.2f}" for e, d in self.runners_up)
        return f"{self.edit} (distance {self.distance:.2f}" + (f"; next: {after})" if after else ")")


class Vocabulary(nn.Module):
    """The anchors [E, D] of the edits of `cfg` (buffer `anchors`, stored in the checkpoint as
    `vocabulary.anchors`), D the size of the matched view of a prompt."""

    def __init__(self, cfg: VocabularyConfig, dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        if not cfg.edits:
            raise ValueError("a Vocabulary needs one or more edits (VocabularyConfig.edits is empty)")
        self.cfg = cfg
        self.register_buffer("anchors", torch.zeros(len(cfg.edits), dim, device=device, dtype=dtype))

    @property
    def edits(self) -> tuple[str, ...]:
        return self.cfg.edits

    def wordings(self, edit: str) -> tuple[str, ...]:
        """The training wordings the config lists for `edit` (() where it stores none)."""
        if edit not in self.cfg.edits:
            raise ValueError(f"unknown edit {edit!r}; this vocabulary has {list(self.cfg.edits)}")
        return self.cfg.wordings[self.cfg.edits.index(edit)] if self.cfg.wordings else ()

    def distances(self, view: Tensor) -> Tensor:
        """Views [N, D] -> float32 [N, E]: each one's distance to each edit's anchor, both
        layer-normed (so the nearest is the most correlated). An empty prompt whose view is zero
        is at 0 from an anchor that is zero, not at a tie with them all."""
        if view.ndim != 2 or view.shape[-1] != self.anchors.shape[-1]:
            raise ValueError(f"prompt views must be [N, {self.anchors.shape[-1]}], got {list(view.shape)}")
        norm = lambda x: F.layer_norm(x.float(), x.shape[-1:])  # noqa: E731
        return torch.cdist(norm(view), norm(self.anchors))

    def nearest(self, view: Tensor) -> Tensor:
        """Views [N, D] -> [N] long: the index of each one's nearest edit (the first of a tie)."""
        return self.distances(view).argmin(-1)

    def snap(self, view: Tensor) -> Tensor:
        """Views [N, D] -> the anchors of their nearest edits [N, D], in the views' dtype: what the
        refiner reads instead of the prompt's own view. On the device, with no host sync."""
        return self.anchors[self.nearest(view)].to(view.dtype)

    def read(self, view: Tensor, runners_up: int = 2) -> list[Reading]:
        """Views [N, D] -> N readings: the nearest edit (the one `snap` takes), its distance, and
        the next `runners_up` edits with theirs."""
        if runners_up < 0:
            raise ValueError(f"runners_up must be >= 0, got {runners_up}")
        dist, order = self.distances(view).sort(dim=-1, stable=True)  # [N, E] each, nearest first
        k = min(runners_up + 1, len(self.edits))
        readings = []
        for d, i in zip(dist[:, :k].tolist(), order[:, :k].tolist()):
            named = [(self.edits[j], dj) for j, dj in zip(i, d)]
            readings.append(Reading(named[0][0], named[0][1], tuple(named[1:])))
        return readings
