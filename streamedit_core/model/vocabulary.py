"""A closed vocabulary of edits: the edits a model knows, and which of them a prompt is read as.

A model with a vocabulary (`VocabularyConfig`, `ModelConfig.vocabulary`; of the shipped models
only the demo model has one) reads every prompt as one of a fixed set of edits. Two matches:
- the edit: the refiner's view of the prompt (`StreamEditModel.refiner_prompt`) nearest to one
  anchor per edit (Euclidean after layer norm, what the refiner's input goes through); the
  refiner gets that anchor instead of the prompt's own view;
- how well the prompt is known: its sentence vector (the text ensemble's `sentence` member, mean
  over tokens) against the sentence vectors of the edits' training wordings, both centred on the
  wordings' mean (the instruction frame they share says nothing about the edit): the cosine to
  the nearest wording. Below `threshold` (chosen on validation wordings when the vocabulary is
  built) the prompt is out of vocabulary; nearest a wording of "none", it asks for no edit, and
  the editor passes the source through.
`Reading` says all of it, so that a user can see it. Built by `train.refine.with_vocabulary`.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VocabularyConfig

# The edit that is the empty prompt's view: no edit.
NO_EDIT = "none"


@dataclass(frozen=True)
class Reading:
    """How a model read one prompt: as `edit` (what it will do), at `distance` from the anchor
    its refiner takes, the next nearest anchors (`runners_up`), and, where the vocabulary has
    wordings, the `similarity` to the nearest training `wording` and whether that is enough to
    count as `known` (out-of-vocabulary prompts still get the nearest edit). Distances are
    Euclidean between layer-normed vectors of D values: 0 is the anchor's own direction."""
    edit: str
    distance: float
    runners_up: tuple[tuple[str, float], ...] = ()
    similarity: float | None = None
    wording: str | None = None
    known: bool = True

    def __str__(self) -> str:  # "sepia (distance 4.12; next: warm 6.30, grayscale 7.02)"
        if self.edit == NO_EDIT:
            return f"{NO_EDIT}: no edit, the source passes through" + (f" (like {self.wording!r})" if self.wording else "")
        after = ", ".join(f"{e} {d:.2f}" for e, d in self.runners_up)
        text = f"{self.edit} (distance {self.distance:.2f}" + (f"; next: {after})" if after else ")")
        if self.similarity is not None and not self.known:
            text += (f" - NOT a known edit: the nearest training wording, {self.wording!r}, is only "
                     f"{self.similarity:.2f} similar")
        return text


class Vocabulary(nn.Module):
    """The anchors [E, D] of the edits of `cfg` (buffer `anchors`, stored in the checkpoint as
    `vocabulary.anchors`), D the size of the matched view of a prompt."""

    def __init__(self, cfg: VocabularyConfig, dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        if not cfg.edits:
            raise ValueError("a Vocabulary needs one or more edits (VocabularyConfig.edits is empty)")
        self.cfg = cfg
        self.register_buffer("anchors", torch.zeros(len(cfg.edits), dim, device=device, dtype=dtype))
        # Every wording in config order, and the edit each belongs to.
        self.wording_list = tuple(w for ws in cfg.wordings for w in ws)
        self.wording_edit = tuple(e for e, ws in zip(cfg.edits, cfg.wordings) for _ in ws)
        # Their sentence vectors [W, d] per text encoder: encoded once, on first use (storing them
        # would push the shipped model past its size limit).
        self._vectors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def wording_vectors(self, text_encoder) -> Tensor | None:
        """The wordings' sentence vectors [W, d] float32 by `text_encoder`'s sentence member
        (None without wordings); cached per encoder."""
        if not self.wording_list:
            return None
        if text_encoder not in self._vectors:
            self._vectors[text_encoder] = text_encoder.sentence_vectors(list(self.wording_list)).float()
        return self._vectors[text_encoder]

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

    @staticmethod
    def similarities(sentence: Tensor, wording_vectors: Tensor) -> Tensor:
        """Sentence vectors [N, d] and the wordings' [W, d] -> float32 [N, W]: the cosine of each
        to each, centred on the wordings' mean (the instruction frame they share cancels out)."""
        mean = wording_vectors.float().mean(0)
        unit = lambda x: F.normalize(x.float() - mean, dim=-1)  # noqa: E731
        return unit(sentence.to(mean.device)) @ unit(wording_vectors).T

    def read(self, view: Tensor, sentence: Tensor | None = None, wording_vectors: Tensor | None = None,
             runners_up: int = 2) -> list[Reading]:
        """Views [N, D] (and, to match the wordings, the prompts' sentence vectors [N, d] and
        `wording_vectors(text_encoder)`) -> N readings: the nearest edit (the one `snap` takes),
        its distance, the next `runners_up` edits with theirs, and the nearest wording's
        similarity; a known prompt whose nearest wording is one of "none" is read as none."""
        if runners_up < 0:
            raise ValueError(f"runners_up must be >= 0, got {runners_up}")
        dist, order = self.distances(view).sort(dim=-1, stable=True)  # [N, E] each, nearest first
        k = min(runners_up + 1, len(self.edits))
        matched = (self.similarities(sentence, wording_vectors).max(-1)
                   if sentence is not None and wording_vectors is not None else None)
        readings = []
        for n, (d, i) in enumerate(zip(dist[:, :k].tolist(), order[:, :k].tolist())):
            named = [(self.edits[j], dj) for j, dj in zip(i, d)]
            reading = Reading(named[0][0], named[0][1], tuple(named[1:]))
            if matched is not None:
                similarity, w = float(matched.values[n]), int(matched.indices[n])
                known = similarity >= self.cfg.threshold
                edit = NO_EDIT if known and self.wording_edit[w] == NO_EDIT else reading.edit
                reading = Reading(edit, reading.distance, reading.runners_up, similarity, self.wording_list[w], known)
            readings.append(reading)
        return readings
