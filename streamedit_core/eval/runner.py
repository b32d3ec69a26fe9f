"""Run a model on benchmark pairs and score every output.

Methods: "ours" (the StreamEditor as configured: streaming, history window), and two
baselines: "per-frame" (the same editor with no history, window_min = window_max = 0, so each
latent frame is edited without seeing the ones before it) and "full-steps" (the offline
teacher: the whole clip at once with many Euler steps, `sampler.sample_offline`). And one
reference, "stle-round-trip": the ground truth encoded and decoded by the model's STLE, the
best that any output through this STLE can score (its ceiling on every metric).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from ..stream.edit import edit_clip
from ..stream.editor import pad_tail
from ..stream.sampler import sample_offline
from .benchmark import Pair
from .classifier import EditClassifier
from .metrics import clip_metrics, overall_quality

log = logging.getLogger(__name__)

BASELINES = ("none", "per-frame", "full-steps", "stle-round-trip")


def edit_stream(model, text_encoder, pair: Pair, *, seed: int = 0, steps: int | None = None,
                history: bool = True) -> Tensor:
    """The StreamEditor's output for the pair's source [T, H, W, 3] (`edit_clip`).
    history=False: window 0."""
    window = {} if history else {"window_min": 0, "window_max": 0}
    return edit_clip(model, text_encoder, pair.source, pair.prompt, seed=seed, steps=steps, **window)


@torch.no_grad()
def edit_offline(model, text_encoder, pair: Pair, *, seed: int = 0, steps: int = 24) -> Tensor:
    """The offline teacher's output for the pair: STLE-encode the whole clip, `steps` Euler
    steps over all latent frames at once, decode. Frames [T, H, W, 3] float32 on the CPU."""
    t = pair.source.shape[0]
    latents = model.stle.encode(_stle_input(model, pair.source))
    text = text_encoder.encode([pair.prompt])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    sampler = model.config.sampler
    edited = sample_offline(model, latents, text, steps, shift=sampler.shift, generator=gen)
    edited = model.refine(edited, latents.float(), text)
    out = model.stle.decode(edited.to(model.dtype))  # [1, 3, T', H, W]
    return out[0].permute(1, 2, 3, 0)[:t].float().cpu()


@torch.no_grad()
def stle_round_trip(model, clip: Tensor) -> Tensor:
    """clip [T, H, W, 3] encoded and decoded by the model's STLE: [T, H, W, 3] float32 on the CPU."""
    out = model.stle.decode(model.stle.encode(_stle_input(model, clip)))
    return out[0].permute(1, 2, 3, 0)[:clip.shape[0]].float().cpu()


def _stle_input(model, clip: Tensor) -> Tensor:
    """clip [T, H, W, 3] -> [1, 3, T', H, W] on the model's device and dtype, padded to whole
    latent frames by repeating the last frame (as StreamEditor.flush)."""
    x = pad_tail(clip, model.config.temporal_stride)
    return x.permute(3, 0, 1, 2).unsqueeze(0).to(model.device, model.dtype)


def score(output: Tensor, pair: Pair, classifier: EditClassifier) -> dict[str, Any]:
    """Every metric of one output (see metrics.py and classifier.py), plus the pair's names.
    Adherence is the classifier's vote (`classified`), withheld where the edit changes the
    source's structure and the output did not take it (`structure_margin` <= 0)."""
    row: dict[str, Any] = {"pair": pair.name, "family": pair.family, "prompt": pair.prompt,
                           "origin": pair.origin}
    row.update(clip_metrics(output, pair.target, pair.source))
    row["classified"], row["predicted"], row["adherence_prob"] = classifier.adherence(
        output, pair.source, pair.family)
    took_structure = row["structure_margin"] is None or row["structure_margin"] > 0
    row["adherence"] = row["classified"] if took_structure else 0.0
    row["overall"] = overall_quality(row)
    return row


def run_method(method: str, model, text_encoder, pairs: list[Pair], classifier: EditClassifier,
               *, seed: int = 0, steps: int | None = None,
               full_steps: int = 24) -> tuple[list[dict[str, Any]], list[Tensor], float]:
    """(rows, outputs, seconds) of one method ("ours", "per-frame" or "full-steps") on pairs."""
    rows, outputs = [], []
    start = time.perf_counter()
    for i, pair in enumerate(pairs):
        if method == "ours":
            out = edit_stream(model, text_encoder, pair, seed=seed, steps=steps)
        elif method == "per-frame":
            out = edit_stream(model, text_encoder, pair, seed=seed, steps=steps, history=False)
        elif method == "full-steps":
            out = edit_offline(model, text_encoder, pair, seed=seed, steps=full_steps)
        elif method == "stle-round-trip":
            out = stle_round_trip(model, pair.target)
        else:
            raise ValueError(f"unknown method {method!r}; expected 'ours' or one of {BASELINES[1:]}")
        rows.append(score(out, pair, classifier))
        outputs.append(out)
        log.info("%s %d/%d %s: overall %.3f", method, i + 1, len(pairs), pair.name, rows[-1]["overall"])
    return rows, outputs, time.perf_counter() - start
