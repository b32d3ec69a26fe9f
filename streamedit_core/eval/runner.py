"""Run a model on benchmark pairs and score every output.

Methods: "ours" (the StreamEditor as configured: streaming, history window), and two
baselines: "per-frame" (the same editor with no history, window_min = window_max = 0, so each
latent frame is edited without seeing the ones before it) and "full-steps" (the offline
teacher: the whole clip at once with many Euler steps, `sampler.sample_offline`). And one
reference, "stle-round-trip": the ground truth encoded and decoded by the model's STLE, the
best that any output through this STLE can score (its ceiling on every metric).

`evaluate` is the one evaluation: `python -m streamedit_core eval` and the demo recipe
(`train.recipe`) both call it, and `report.write_report` writes what it returns.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..stream.edit import edit_clip
from ..stream.editor import pad_tail, read_prompts
from ..stream.sampler import sample_offline
from .benchmark import Pair, build_pairs, ground_truth_adherence, train_classifier
from .classifier import EditClassifier
from .metrics import clip_metrics, overall_quality, pooled_flicker, psnr, summarize
from .report import contact_sheet, hardware, targets_met

log = logging.getLogger(__name__)

BASELINES = ("none", "per-frame", "full-steps", "stle-round-trip")
CEILING = "stle-round-trip"  # the method whose summary is the ceiling (ceiling_psnr, ceiling_adherence)


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
    """(rows, outputs, seconds) of one method ("ours", "per-frame" or "full-steps") on pairs.
    For a model with a closed vocabulary, the rows of methods that read the prompt also say
    which edit it was read as (`read_as`, `read_distance`)."""
    rows, outputs = [], []
    start = time.perf_counter()
    readings = None if method == CEILING else read_prompts(model, text_encoder, sorted({p.prompt for p in pairs}))
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
        if readings is not None:
            rows[-1].update(read_as=readings[pair.prompt].edit, read_distance=readings[pair.prompt].distance)
        outputs.append(out)
        log.info("%s %d/%d %s: overall %.3f", method, i + 1, len(pairs), pair.name, rows[-1]["overall"])
    return rows, outputs, time.perf_counter() - start


def stle_psnr(model, clips: list[Tensor]) -> float:
    """Mean PSNR (dB) of the clips [T, H, W, 3] encoded and decoded by the model's STLE."""
    return sum(psnr(stle_round_trip(model, c), c) for c in clips) / len(clips)


def evaluate(model, text_encoder, *, split: str = "test", limit: int | None = None, seed: int = 0,
             steps: int | None = None, baseline: str = "none", full_steps: int = 24,
             model_name: str = "", targets: Mapping[str, float] | None = None,
             sheet_rows: int = 0) -> tuple[dict[str, Any], Tensor | None]:
    """Score `model` (with `text_encoder`) on the benchmark's `split` (its first `limit` pairs):
    "ours" and, unless "none", the `baseline` method. Returns (result, contact sheet).

    result (JSON-ready; `report.write_report` writes it): the settings, `classifier`,
    `summary` (per method: `metrics.summarize`), `seconds` and `rows` (per method, one row per
    pair), then the headline numbers of "ours": psnr, ssim, adherence, adherence_classified,
    temporal_coherence, overall, the pooled flicker (flicker, flicker_ground_truth,
    flicker_ratio: `metrics.pooled_flicker`), stle_psnr (the STLE's reconstruction of the
    sources), ceiling_psnr and ceiling_adherence (the summary of the "stle-round-trip" baseline;
    None without it), eval_seconds; with `targets` ({key: target}), `targets` and `targets_met`.
    The contact sheet ([H, W, 3], None for sheet_rows 0): one row per pair of the first
    `sheet_rows`, the middle frame of source | each method | ground truth."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    pairs = build_pairs(split, limit=limit)
    classifier, accuracy = train_classifier()
    start = time.perf_counter()
    methods = ["ours"] + ([] if baseline == "none" else [baseline])
    rows, outputs, seconds = {}, {}, {}
    for method in methods:
        rows[method], outputs[method], seconds[method] = run_method(
            method, model, text_encoder, pairs, classifier, seed=seed, steps=steps, full_steps=full_steps)
    summary = {m: summarize(r) for m, r in rows.items()}
    ours, ceiling = summary["ours"], summary.get(CEILING)
    result: dict[str, Any] = {
        "split": split, "pairs": len(pairs), "model": model_name, "seed": seed,
        "steps": steps or model.config.sampler.steps, "full_steps": full_steps,
        "frames": tuple(pairs[0].source.shape[:3]) if pairs else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hardware": hardware(),
        "classifier": {"classes": list(classifier.classes), "validation_accuracy": accuracy,
                       "test_accuracy": ground_truth_adherence(classifier, pairs)},
        "summary": summary, "seconds": seconds, "rows": rows,
        "psnr": ours["psnr"], "ssim": ours["ssim"], "adherence": ours["adherence"],
        "adherence_classified": ours["classified"],  # before the structure check (metrics.py)
        "temporal_coherence": ours["temporal_coherence"], "overall": ours["overall"],
        **pooled_flicker(outputs["ours"], [p.target for p in pairs]),
        "stle_psnr": stle_psnr(model, [p.source for p in pairs]),
        "ceiling_psnr": ceiling["psnr"] if ceiling else None,
        "ceiling_adherence": ceiling["adherence"] if ceiling else None,
    }
    result["eval_seconds"] = time.perf_counter() - start
    if targets:
        result["targets"] = dict(targets)
        result["targets_met"] = targets_met(result, targets)
    tiles = []
    for i, pair in enumerate(pairs[:sheet_rows]):
        mid = pair.source.shape[0] // 2
        tiles.append((pair.source[mid], *(outputs[m][i][mid] for m in methods), pair.target[mid]))
    return result, contact_sheet(tiles) if tiles else None
