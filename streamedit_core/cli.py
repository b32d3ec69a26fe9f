"""`python -m streamedit_core {edit,train,distill,train-demo,eval,bench,demo,live} ...`

`edit` is implemented here; the other subcommands forward their arguments to their modules
(imported only when asked for). Bad input ends with one line `error: <message>` on stderr and
exit status 2, without a traceback and without a half-written output file.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from .config import PRESETS

log = logging.getLogger(__name__)

# subcommand -> (module, function taking argv); imported lazily, they pull in training code
_FORWARDED = {
    "train": ("streamedit_core.train.cli", "main_train"),
    "distill": ("streamedit_core.train.cli", "main_distill"),
    "train-demo": ("streamedit_core.train.recipe", "main"),
    "eval": ("streamedit_core.eval.cli", "main"),
    "bench": ("streamedit_core.bench.cli", "main"),
    "demo": ("streamedit_core.bench.demo", "main"),
    "live": ("streamedit_core.live.cli", "main"),
}
COMMANDS = ["edit", "info", *_FORWARDED]


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _edit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streamedit_core edit",
                                description="Edit a video file with a text prompt.")
    p.add_argument("input", help="input video (mp4, mov, mkv, ...)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("-p", "--prompt", help="the edit, e.g. 'make it a pencil sketch' (`info` lists the edits "
                                              "the shipped demo model knows)")
    what.add_argument("--schedule", help="prompts switched at video frames: 'frame: prompt' entries separated "
                                         "by ';', the first at frame 0, e.g. '0: make it sepia; 48: make it "
                                         "a pencil sketch'")
    p.add_argument("--transition", type=int, default=0,
                   help="with --schedule: video frames over which each new prompt is blended in (default 0)")
    p.add_argument("-o", "--output", required=True, help="output video path (written atomically)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a StreamEdit .safetensors checkpoint (default: the shipped demo "
                                            "model, models/streamedit_demo.safetensors)")
    model.add_argument("--preset", help=f"random weights of a preset ({', '.join(PRESETS)}); for tests "
                                        "and speed work")
    p.add_argument("--strict", action="store_true",
                   help="refuse a prompt the model does not know (a model with a closed vocabulary, like the "
                        "demo model, otherwise edits it as the nearest edit it knows, with a warning)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (and the weights' seed with --preset)")
    p.add_argument("--steps", type=int, default=None, help="denoising levels (default: the model's, 6)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's; 1 = CFG-free)")
    p.add_argument("--text-ensemble", default=None,
                   help="folder with an ensemble.json (default: the built-in MiniLM ensemble)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--chunk-frames", type=int, default=16, help="frames read per chunk")
    p.add_argument("--size", default=None,
                   help="working size: edit at this size and scale the result back to the video's, e.g. "
                        "640 (the longer side, aspect kept) or 640x360 (default: the video's own size; "
                        "past 1920 x 1080 a working size is needed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load_model_and_text(args: argparse.Namespace, device):
    """(model, text encoder) that --checkpoint or --preset and --text-ensemble name; neither:
    the shipped demo model (said on stderr)."""
    from .io.checkpoint import checkpoint_or_shipped, load_model
    from .model.text import TextEnsemble

    model = load_model(checkpoint_or_shipped(args.checkpoint, args.preset), preset=args.preset, seed=args.seed,
                       device=device)
    return model, TextEnsemble.for_model(model.config, args.text_ensemble)


def main_edit(argv: Sequence[str]) -> int:
    args = _edit_parser().parse_args(argv)
    import os

    from .stream.edit import edit_video, parse_size
    from .stream.editor import describe_prompts
    from .stream.schedule import PromptSchedule, check_prompt
    from .types import resolve_device

    prompt = (PromptSchedule.parse(args.schedule, args.transition) if args.schedule is not None
              else check_prompt(args.prompt))
    if not os.path.exists(args.input):
        raise UsageError(f"input video not found: {args.input!r}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"output directory does not exist: {out_dir!r}")
    size = parse_size(args.size)
    device = resolve_device(args.device)
    model, text = load_model_and_text(args, device)
    prompts = prompt.prompts if isinstance(prompt, PromptSchedule) else [prompt]
    # what a closed-vocabulary model will do
    warnings, lines = describe_prompts(model, text, prompts, strict="--strict" if args.strict else None)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    for line in lines:
        print(line)

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # created on the first step: input errors come before any bar
            from tqdm import tqdm
            # a step: one latent frame (4 video frames) through the model; the last steps flush
            bar = tqdm(total=total, unit="step", desc="editing (+ flush)",
                       dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)

    try:
        summary = edit_video(model, text, args.input, args.output, prompt, seed=args.seed,
                             steps=args.steps, cfg_scale=args.cfg_scale, progress=progress,
                             chunk_frames=args.chunk_frames, size=size)
    finally:
        if bar is not None:
            bar.close()
    w, h = summary["working_size"]
    at = "" if (w, h) == (summary["width"], summary["height"]) else f", edited at {w}x{h}"
    print(f"edited {summary['frames']} frames ({summary['width']}x{summary['height']}{at}, "
          f"{summary['video_fps']:.3g} fps video) in {summary['seconds']:.1f} s: "
          f"{summary['fps']:.2f} frames/s -> {args.output}")
    return 0


def main_info(argv: Sequence[str]) -> int:
    """`python -m streamedit_core info [MODEL]`: what a checkpoint holds and, for a model with a
    closed vocabulary, the edits it knows, some of their wordings and how prompts are matched."""
    p = argparse.ArgumentParser(prog="python -m streamedit_core info",
                                description="Describe a StreamEdit checkpoint and the edits it knows.")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a .safetensors checkpoint (default: the shipped demo model)")
    p.add_argument("--wordings", type=int, default=3, help="example wordings shown per edit")
    args = p.parse_args(argv)
    from .io.checkpoint import SHIPPED_MODEL, read_checkpoint_config, read_checkpoint_metadata
    from .model import count_parameters
    from .model.vocabulary import NO_EDIT

    path = args.checkpoint or SHIPPED_MODEL
    config, meta = read_checkpoint_config(path), read_checkpoint_metadata(path)
    counts = count_parameters(config)
    sampler, vocab = config.sampler, config.vocabulary
    print(f"{path}: a {config.name!r} model, {counts['total'] / 1e6:.1f} M parameters "
          f"(STLE {counts['stle'] / 1e6:.1f} M, DiT {counts['dit'] / 1e6:.1f} M, refiner {counts['refiner'] / 1e3:.0f} k)")
    print(f"sampling: {sampler.steps} steps, CFG scale {sampler.cfg_scale:g}, history window "
          f"{sampler.window_min}-{sampler.window_max} latent frames; frame sizes: multiples of {config.spatial_stride}")
    print("text: " + ", ".join(f"{m.kind} ({m.dim}-d, {m.max_tokens} tokens)" for m in config.dit.text_members))
    if meta.get("trained_on"):
        print(f"trained on: {meta['trained_on']}")
    if not vocab.edits:
        print("edits: any prompt (no closed vocabulary: the model reads each prompt as it is)")
        return 0
    print(f"edits: a closed vocabulary of {len(vocab.edits)}; every prompt is edited as the nearest of them "
          f"(the refiner's view of the prompt against one anchor per edit).")
    for i, edit in enumerate(vocab.edits):
        words = vocab.wordings[i] if vocab.wordings else ()
        shown = "; ".join(repr(w) for w in words[:args.wordings])
        note = " (no edit: the source passes through)" if edit == NO_EDIT else ""
        print(f"  {edit:<10} {len(words)} wordings{note}{': ' + shown if shown else ''}")
    if vocab.threshold:
        print(f"known prompts: sentence vectors (centred on the wordings' mean) at least {vocab.threshold:g} "
              "similar to a wording; others get a warning (`edit --strict`: an error)")
    return 0


def _forward(command: str, argv: Sequence[str]) -> int:
    module_name, func_name = _FORWARDED[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # only our own missing module means "not in this build"; a missing dependency propagates
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UsageError(f"'{command}' is not available in this build ({module_name} is missing)") from e
        raise
    func: Callable[[Sequence[str]], int | None] | None = getattr(module, func_name, None)
    if func is None:
        raise UsageError(f"'{command}' is not available in this build ({module_name}.{func_name} is missing)")
    return int(func(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m streamedit_core {{{','.join(COMMANDS)}}} ...\n\n"
              "  edit        edit a video file with a text prompt (or a prompt schedule)\n"
              "  info        what a checkpoint holds, and the edits it knows\n"
              "  train       train a model (SCM loss, ASW partitions)\n"
              "  distill     progressive distillation to a 6-step CFG-free student\n"
              "  train-demo  the demo model end to end: stages, refiner, fp16 export, eval against targets\n"
              "  eval        score a model on the V2V edit benchmark (JSON, Markdown, contact sheet)\n"
              "  bench       speed of the streaming editor (bench comfyui: through a real ComfyUI)\n"
              "  demo        the edit-a-video workflow in a real, headless ComfyUI (make demo)\n"
              "  live        edit a camera stream live in the browser (WebRTC page)\n\n"
              "python -m streamedit_core COMMAND --help for a command's options.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .io.files import Terminated, raise_on_signals, restore_signals

    # SIGTERM/SIGHUP end a command as Ctrl-C does: writers delete their temporary files.
    previous = raise_on_signals()
    try:
        if command == "edit":
            return main_edit(rest)
        if command == "info":
            return main_info(rest)
        if command in _FORWARDED:
            return _forward(command, rest)
        raise UsageError(f"unknown command {command!r}; expected one of {COMMANDS}")
    except (UsageError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"error: {e} (no output written)", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("error: interrupted (no output written)", file=sys.stderr)
        return 130
    finally:
        restore_signals(previous)
