"""Evaluation reports: the JSON, a Markdown table, and a contact-sheet PNG.

`write_report` writes what `runner.evaluate` returns: `eval.json`, `eval.md` (the headline of
"ours" against the targets, if any, the ceiling, the summary per method, then one table of pairs
per method) and `contact_sheet.png`.

The PNG is encoded with PyAV's PNG encoder (PyAV is already a dependency for video), so no
image library is needed.
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch import Tensor

from ..io.files import write_atomic
from .metrics import COLUMNS

GUTTER = 2  # pixels of white between the tiles of the contact sheet
# The headline of a report, in table order: (key of runner.evaluate's result, label, format).
HEADLINE = (
    ("psnr", "Edit Fidelity PSNR (dB)", ".2f"),
    ("adherence", "Prompt Adherence", ".3f"),
    ("flicker_ratio", "Flicker / ground truth's, pooled", ".2f"),
    ("stle_psnr", "STLE reconstruction PSNR (dB)", ".2f"),
    ("ssim", "Edit Fidelity SSIM", ".3f"),
    ("temporal_coherence", "Temporal Coherence", ".3f"),
    ("overall", "Overall Quality", ".3f"),
)
# Targets met within 1/target..target (less flicker than the ground truth is frozen motion, not
# coherence); every other target is a minimum.
TWO_SIDED = ("flicker_ratio",)


def hardware() -> str:
    """The machine, for a report: the GPU's name, or the CPU's model, cores and torch threads."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the evaluation result (summary, per-pair rows, settings) as indented JSON."""
    path = Path(path)
    return write_atomic(path, json.dumps(result, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per method (e.g. "ours", "per-frame"), one column per metric (COLUMNS)."""
    head = "| method | pairs | " + " | ".join(h for _, h in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    rows = [f"| {name} | {s.get('n_psnr', 0)} | " + " | ".join(_cell(s.get(k)) for k, _ in COLUMNS) + " |"
            for name, s in summaries.items()]
    return "\n".join([head, rule, *rows]) + "\n"


def _predicted(row: dict[str, Any]) -> str:
    """The classifier's class, marked where the structure check withheld its vote."""
    withheld = row.get("classified", row["adherence"]) > row["adherence"]
    return f"{row['predicted']} (kept the source's structure)" if withheld else row["predicted"]


def targets_met(result: dict[str, Any], targets: dict[str, float]) -> dict[str, bool]:
    """Per target key: whether result[key] meets it (>= target; TWO_SIDED keys: within
    1/target..target)."""
    met = {}
    for key, target in targets.items():
        value = result.get(key)
        if value is None:
            raise ValueError(f"target {key!r}: the result has no such number (keys: {sorted(result)})")
        met[key] = 1 / target <= value <= target if key in TWO_SIDED else value >= target
    return met


def headline(result: dict[str, Any]) -> str:
    """The run (split, pairs, steps, date, machine), then the HEADLINE numbers of "ours" against
    the result's targets where it has them, then the ceiling where the round trip ran."""
    targets, met = result.get("targets") or {}, result.get("targets_met") or {}
    lines = [f"{result['split'].capitalize()} split, {result['pairs']} pairs, {result['steps']} steps, "
             f"{result['date']}, {result['hardware']}", "",
             "| metric | value | target | met |" if targets else "| metric | value |",
             "|---|---:|---:|:---:|" if targets else "|---|---:|"]
    known = [k for k, _, _ in HEADLINE]
    for key, label, fmt in HEADLINE + tuple((k, k, ".3f") for k in targets if k not in known):
        cells = [label, "n/a" if result[key] is None else format(result[key], fmt)]
        if targets and key in targets:
            t = targets[key]
            cells += [f"{1 / t:.2f}..{t}" if key in TWO_SIDED else f">= {t}", "yes" if met[key] else "no"]
        elif targets:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if result.get("ceiling_psnr") is not None:
        lines += [f"Ceiling (the ground truth encoded and decoded by this STLE): PSNR "
                  f"{result['ceiling_psnr']:.2f} dB, adherence {result['ceiling_adherence']:.3f}.", ""]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The whole report: the headline, the summary table per method, then a table of pairs per
    method."""
    lines = ["# StreamEdit benchmark", "", headline(result),
             f"Model `{result['model']}`, seed {result['seed']}; edit-family classifier held-out "
             f"accuracy {result['classifier']['validation_accuracy']:.3f} (validation), "
             f"{result['classifier']['test_accuracy']:.3f} (ground truth of this split)", "",
             markdown_table(result["summary"])]
    for method, rows in result["rows"].items():
        read = any("read_as" in r for r in rows)  # a model with a closed vocabulary
        lines += [f"## Pairs: {method}", "",
                  "| pair | family | prompt | " + "read as | " * read + "predicted | "
                  + " | ".join(h for _, h in COLUMNS) + " |",
                  "|---|---|---|" + "---|" * read + "---|" + "---:|" * len(COLUMNS)]
        lines += [f"| {r['pair']} | {r['family']} | {r['prompt']} | " + f"{r.get('read_as')} | " * read
                  + f"{_predicted(r)} | " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def write_markdown(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """`markdown(result)` to `path`."""
    return write_atomic(Path(path), markdown(result))


def write_report(result: dict[str, Any], folder: str | os.PathLike, sheet: Tensor | None = None) -> Path:
    """runner.evaluate's result to `folder` (created): eval.json, eval.md, and contact_sheet.png
    where a sheet is given. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(result, folder / "eval.json")
    write_markdown(result, folder / "eval.md")
    if sheet is not None:
        write_png(sheet, folder / "contact_sheet.png")
    return folder


def write_png(image: Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """image [H, W, 3] float in [0, 1] or uint8 -> PNG file (PyAV's encoder)."""
    img = torch.as_tensor(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {tuple(img.shape)}")
    if img.dtype != torch.uint8:
        img = (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = np.ascontiguousarray(img.numpy())
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = arr.shape[1], arr.shape[0], "rgb24"
    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
    packets = list(codec.encode(frame)) + list(codec.encode(None))
    path = Path(path)
    return write_atomic(path, b"".join(bytes(p) for p in packets))


def contact_sheet(rows: list[tuple[Tensor, ...]]) -> Tensor:
    """rows of equally sized frames [H, W, 3] -> one image, tiles separated by white gutters."""
    if not rows:
        raise ValueError("contact sheet needs at least one row")
    h, w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    sheet = torch.ones(len(rows) * (h + GUTTER) + GUTTER, cols * (w + GUTTER) + GUTTER, 3)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if tuple(tile.shape) != (h, w, 3):
                raise ValueError(f"contact sheet tile ({i}, {j}) has shape {tuple(tile.shape)}, "
                                 f"expected {(h, w, 3)}")
            y, x = GUTTER + i * (h + GUTTER), GUTTER + j * (w + GUTTER)
            sheet[y:y + h, x:x + w] = tile.float().clamp(0, 1)
    return sheet
