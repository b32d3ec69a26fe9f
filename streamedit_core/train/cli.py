"""`python -m streamedit_core train ...` and `... distill ...` (also under torchrun).

    python -m streamedit_core train --config configs/train/base.json --set steps=200000
    torchrun --nproc_per_node 8 -m streamedit_core train --config configs/train/base.json --resume
    python -m streamedit_core distill --config configs/train/distill.json --teacher runs/finetune/model.safetensors

`--set key=value` overrides one config field (`data.path=...` for the data block; values are
JSON, or plain strings). Bad input raises ValueError/FileNotFoundError, which the top-level CLI
prints as one `error:` line (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Sequence

from .config import TrainConfig


def _parser(prog: str, distill: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m streamedit_core {prog}",
                                description=("Hierarchical progressive distillation to a CFG-free "
                                             "few-step student." if distill else
                                             "Train the STLE or the DiT (SCM loss, ASW partitions)."))
    p.add_argument("--config", help="stage config JSON (configs/train/*.json); default: built-in defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. steps=100 or data.path=data/manifest.jsonl")
    p.add_argument("--out-dir", help="run folder (state, metrics.jsonl, model.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/train_state.safetensors")
    if distill:
        p.add_argument("--teacher", help="the teacher checkpoint (sets init_checkpoint)")
    else:
        p.add_argument("--encode-latents", metavar="DIR",
                       help="instead of training: encode the config's data with the model's STLE into "
                            "latent shards in DIR (then train the DiT with data.kind=latents)")
        p.add_argument("--count", type=int, default=1024, help="samples to encode with --encode-latents")
        p.add_argument("--encode-text", metavar="FILE",
                       help="instead of training: encode every prompt of the config's data with its text "
                            "ensemble into FILE (.safetensors); then train with text_cache=FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _apply_overrides(d: dict[str, Any], items: list[str]) -> dict[str, Any]:
    d = json.loads(json.dumps(d))
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        target = d
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ValueError(f"--set {key}: {part!r} is not a config block")
            target = target[part]
        target[leaf] = _parse_value(value)
    return d


def _config(args: argparse.Namespace, distill: bool) -> TrainConfig:
    base = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    d = base.to_dict()
    if distill:
        d["task"] = "distill"
        if args.teacher:
            d["init_checkpoint"] = args.teacher
    if args.out_dir:
        d["out_dir"] = args.out_dir
    if args.quiet:
        d["progress"] = False
    d = _apply_overrides(d, args.set)
    cfg = TrainConfig.from_dict(d)
    if distill and not cfg.init_checkpoint:
        raise ValueError("distill needs a teacher: --teacher FILE.safetensors (or init_checkpoint in the config)")
    if distill and cfg.task != "distill":
        raise ValueError(f"distill runs task 'distill', the config says task={cfg.task!r}")
    return cfg


def _run(argv: Sequence[str], distill: bool) -> int:
    args = _parser("distill" if distill else "train", distill).parse_args(list(argv))
    cfg = _config(args, distill)
    logging.getLogger("streamedit_core").setLevel(logging.INFO)
    from . import dist
    from .trainer import Trainer
    try:
        if not distill and args.encode_text:
            from ..io.checkpoint import read_checkpoint_config
            from ..config import get_preset
            from .textbank import save_text_cache
            from .trainer import build_dataset, build_text, training_prompts
            model_config = (read_checkpoint_config(cfg.init_checkpoint) if cfg.init_checkpoint
                            else get_preset(cfg.preset))
            encoder = build_text(cfg.replace(text_cache=None), model_config)
            save_text_cache(encoder, training_prompts(cfg, build_dataset(cfg))[0], args.encode_text)
            return 0
        if not distill and args.encode_latents:
            from .data import encode_latent_shards
            trainer = Trainer(cfg.replace(task="stle", data=cfg.data))  # builds model + pixel data
            encode_latent_shards(trainer.model.stle, trainer.dataset, args.encode_latents, args.count,
                                 device=trainer.info.device)
            return 0
        path = Trainer(cfg).run(resume=args.resume)
        if dist.setup(cfg.device).is_main:
            print(f"{cfg.task}: {cfg.steps} steps done -> {path}")
    finally:
        dist.teardown()
    return 0


def main_train(argv: Sequence[str]) -> int:
    return _run(argv, distill=False)


def main_distill(argv: Sequence[str]) -> int:
    return _run(argv, distill=True)
