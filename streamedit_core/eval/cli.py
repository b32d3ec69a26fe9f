"""`python -m streamedit_core eval`: score a model on the benchmark.

Writes to --out (`report.write_report`): `eval.json` (settings, summary per method, one row per
pair, the headline numbers of `runner.evaluate`), `eval.md` (the same as Markdown tables) and
`contact_sheet.png` (one row per pair, middle frame: source | ours | baseline, if any | ground
truth).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

from ..config import PRESETS
from ..io.checkpoint import load_model
from ..model.text import TextEnsemble
from ..types import resolve_device
from .benchmark import SPLITS
from .report import write_report
from .runner import BASELINES, evaluate

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streamedit_core eval",
                                description="Score a model on the StreamEdit V2V benchmark.")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a StreamEdit .safetensors checkpoint")
    model.add_argument("--preset", help=f"random weights of a preset ({', '.join(PRESETS)})")
    p.add_argument("--seed", type=int, default=0, help="noise seed (and the weights' seed with --preset)")
    p.add_argument("--split", default="test", choices=SPLITS, help="benchmark split (default: test)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N pairs")
    p.add_argument("--steps", type=int, default=None, help="denoising levels (default: the model's)")
    p.add_argument("--baseline", default="none", choices=BASELINES,
                   help="also run a baseline: per-frame (no history window), full-steps "
                        "(offline teacher over the whole clip) or stle-round-trip (the ground truth "
                        "encoded and decoded: the ceiling of any output through this STLE)")
    p.add_argument("--full-steps", type=int, default=24, help="Euler steps of the full-steps baseline")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--text-ensemble", default=None,
                   help="folder with an ensemble.json (default: the built-in MiniLM ensemble)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--sheet-rows", type=int, default=12, help="pairs shown in the contact sheet")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.full_steps < 1:
        raise ValueError(f"--full-steps must be >= 1, got {args.full_steps}")
    if args.sheet_rows < 1:
        raise ValueError(f"--sheet-rows must be >= 1, got {args.sheet_rows}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} exists and is not a folder")


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    _check_args(args)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, preset=args.preset, seed=args.seed, device=device)
    text = TextEnsemble.for_model(model.config, args.text_ensemble)

    result, sheet = evaluate(model, text, split=args.split, limit=args.limit, seed=args.seed,
                             steps=args.steps, baseline=args.baseline, full_steps=args.full_steps,
                             model_name=args.checkpoint or f"preset {args.preset}",
                             sheet_rows=args.sheet_rows)
    out = write_report(result, args.out, sheet)
    s = result["summary"]["ours"]
    log.info("eval: %d pairs, overall %.3f -> %s", result["pairs"], s["overall"], out)
    print(f"scored {result['pairs']} {args.split} pairs: overall quality {s['overall']:.3f} "
          f"(PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}, adherence {s['adherence']:.3f}) -> {out}")
    return 0
