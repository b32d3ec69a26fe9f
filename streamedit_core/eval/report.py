"""Evaluation reports: the JSON, a Markdown table, and a contact-sheet PNG.

The PNG is encoded with PyAV's PNG encoder (PyAV is already a dependency for video), so no
image library is needed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch import Tensor

from ..io.files import write_atomic
from .metrics import COLUMNS

GUTTER = 2  # pixels of white between the tiles of the contact sheet


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


def write_markdown(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """The summary table, then a per-pair table of the first method."""
    path = Path(path)
    lines = ["# StreamEdit benchmark", "",
             f"split `{result['split']}`, {result['pairs']} pairs, model `{result['model']}`, "
             f"steps {result['steps']}, seed {result['seed']}; edit-family classifier held-out "
             f"accuracy {result['classifier']['validation_accuracy']:.3f} (validation), "
             f"{result['classifier']['test_accuracy']:.3f} (ground truth of this split)", "",
             markdown_table(result["summary"])]
    for method, rows in result["rows"].items():
        lines += [f"## Pairs: {method}", "",
                  "| pair | family | prompt | predicted | " + " | ".join(h for _, h in COLUMNS) + " |",
                  "|---|---|---|---|" + "---:|" * len(COLUMNS)]
        lines += [f"| {r['pair']} | {r['family']} | {r['prompt']} | {_predicted(r)} | "
                  + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
        lines.append("")
    return write_atomic(path, "\n".join(lines))


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
