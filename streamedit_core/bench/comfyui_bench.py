"""What the node graph costs a user: the chunk-streaming workflow in a real ComfyUI, job after job.

`workflows/stream_chunks.json` (Load Video Chunk -> STLE Encode -> DiT Sampler -> STLE Decode ->
Preview Image, one stream_id) is queued over the HTTP API once per chunk, each job waited for on
the WebSocket before the next is queued, as an API client streaming a video does. Then the core
`StreamEditor` edits the same chunks of the same file with the same model and settings, in this
process, once before the server starts and once after it has stopped (so the two never share
the machine, and drift shows as a difference between the two core runs). Per-job overhead =
median job time - median core chunk time (both core runs' timed chunks). Writes
`bench/results/<name>.json` like `python -m streamedit_core bench` (device, versions, commit,
arguments, results).

    .venv/bin/python -m streamedit_core bench comfyui                      # shipped demo model, 128 px
    .venv/bin/python -m streamedit_core bench comfyui --model demo --size 512 --gpu  # random demo weights, CUDA

The text encoder is the loader node's built-in MiniLM, so the model must take it (shipped, tiny,
demo); the 2b and 10b presets need an ensemble folder of their members, which none ships.

The clip is the benchmark's synthetic pan (`bench.pattern_texture`, 1 px per frame, no scene
cut) written as H.264 into ComfyUI's input folder; both sides read it from there.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import PRESETS
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..model import StreamEditModel
from . import speed as bench
from ..io.checkpoint import SHIPPED_MODEL
from .comfyui import COMFYUI_ROOT, REPO, ComfyClient, ComfyServer, ui_to_api

WORKFLOW = REPO / "workflows" / "stream_chunks.json"
CLIP_NAME = "bench_pan.mp4"
CLIP_FPS = 24


def place_model(spec: str, models_dir: Path) -> tuple[str, Path]:
    """(name for the loader node, path): the shipped model, a .safetensors path, or a preset's
    random weights written to ComfyUI's models/streamedit/."""
    if spec in PRESETS:
        path = models_dir / f"bench_{spec}_random.safetensors"
        if not path.is_file():
            save_checkpoint(StreamEditModel.from_preset(spec, seed=0), path)
        return path.name, path
    path = SHIPPED_MODEL if spec == "shipped" else Path(spec)
    if not path.is_file():
        raise ValueError(f"--model {spec!r}: no such checkpoint; expected 'shipped', a preset "
                         f"({', '.join(PRESETS)}) or a .safetensors path")
    target = models_dir / path.name
    if path.resolve() != SHIPPED_MODEL.resolve() and not target.exists():
        target.symlink_to(path.resolve())  # the loader lists models/streamedit/ (and the package's models/)
    return path.name, path


def write_clip(path: Path, size: int, frames: int) -> None:
    from ..io.video import VideoWriter

    video = bench.pan(bench.pattern_texture(size), 0, frames)  # uint8 [T, H, W, 3]
    with VideoWriter(path, CLIP_FPS, size, size) as writer:
        writer.write(video.float() / 255)


def job_prompt(template: dict, *, model: str, prompt: str, stream_id: str, chunk: int,
               chunk_frames: int, steps: int, video: str = CLIP_NAME, **sampler: Any) -> dict:
    """The workflow as queued for one chunk: every node of a kind gets the same values
    (`sampler`: more DiT Sampler inputs, e.g. another seed)."""
    api = copy.deepcopy(template)
    values = {
        "StreamEditModelLoader": {"ckpt_name": model},
        "StreamEditTextEncode": {"prompt": prompt},
        "PrimitiveInt": {"value": chunk},
        "StreamEditLoadVideoChunk": {"video": video, "chunk_frames": chunk_frames},
        "StreamEditSTLEEncode": {"stream_id": stream_id},
        "StreamEditDiTSampler": {"stream_id": stream_id, "steps": steps, "seed": 0,
                                 "window_min": 1, "window_max": 4, **sampler},
        "StreamEditSTLEDecode": {"stream_id": stream_id},
    }
    for node in api.values():
        node["inputs"].update(values.get(node["class_type"], {}))
    return api


def run_comfyui(base: Path, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Queue warmup + chunks jobs on one stream; wall time of each from POST to its end."""
    server = ComfyServer(base, threads=args.threads, gpu=args.gpu)
    t0 = time.perf_counter()
    server.start()
    start_s = time.perf_counter() - t0
    jobs_s, frames_out = [], []
    try:
        client = ComfyClient(server.url)
        template = ui_to_api(json.loads(WORKFLOW.read_text()), client.object_info())
        stream_id = f"bench-{uuid.uuid4().hex[:8]}"
        for k in range(args.warmup + args.chunks):
            api = job_prompt(template, model=model, prompt=args.prompt, stream_id=stream_id, chunk=k,
                             chunk_frames=args.chunk_frames, steps=args.steps)
            t = time.perf_counter()
            result = client.wait(client.queue(api), timeout=args.timeout)
            jobs_s.append(time.perf_counter() - t)
            if result.status != "execution_success":
                raise RuntimeError(f"job {k} ended with {result.status}: {result.error}\n"
                                   f"{server.log()[-3000:]}")
            outputs = client.history(result.prompt_id)["outputs"]
            frames_out.append(sum(len(o.get("images", [])) for o in outputs.values()))
        client.close()
    finally:
        server.stop()
    return {"server_start_s": start_s, "job_s": jobs_s, "frames_out": frames_out}


def run_core(path: Path, clip: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same chunks through StreamEditor: read chunk k from the file, feed it, frames to host."""
    from ..io.video import VideoReader
    from ..model.text import TextEnsemble
    from ..stream.editor import StreamEditor

    device = torch.device("cuda" if args.gpu else "cpu")
    dtype = torch.bfloat16 if args.gpu else torch.float32  # the loader node's "auto"
    with torch.inference_mode():  # as ComfyUI runs nodes
        model = load_checkpoint(path, device=device, dtype=dtype)
        text = TextEnsemble.for_model(model.config, device=device)
        editor = StreamEditor(model, text, args.prompt, seed=0, steps=args.steps,
                              window_min=1, window_max=4)
        chunks_s, frames_out = [], []
        reader = iter(VideoReader(clip, chunk_frames=args.chunk_frames))
        for _ in range(args.warmup + args.chunks):
            t = time.perf_counter()
            out = editor.feed(next(reader).to(device)).cpu()
            chunks_s.append(time.perf_counter() - t)
            frames_out.append(len(out))
    return {"chunk_s": chunks_s, "frames_out": frames_out}


def summarise(times: list[float], frames: list[int], warmup: int) -> dict[str, Any]:
    t, f = times[warmup:], frames[warmup:]
    return {"median_s": statistics.median(t), "p95_s": bench.percentile(t, 95),
            "fps": sum(f) / sum(t), "frames_timed": sum(f)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.gpu and not torch.cuda.is_available():
        raise ValueError("--gpu asked for, but CUDA is not available here")
    if args.size % 8 or args.size <= 0:
        raise ValueError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.chunk_frames % 4 or args.chunk_frames <= 0:
        raise ValueError(f"--chunk-frames must be a positive multiple of 4, got {args.chunk_frames}")
    if not (COMFYUI_ROOT / "main.py").is_file():
        raise ValueError(f"no ComfyUI at {COMFYUI_ROOT}: run `make comfyui` first")
    base = args.base
    ComfyServer(base).prepare()
    model, path = place_model(args.model, base / "models" / "streamedit")
    clip = base / "input" / CLIP_NAME
    write_clip(clip, args.size, args.chunk_frames * (args.warmup + args.chunks))

    # core, ComfyUI, core again: a shared machine drifts, and this puts both core runs around it
    before = run_core(path, clip, args)
    comfy = run_comfyui(base, model, args)
    after = run_core(path, clip, args)
    if not comfy["frames_out"] == before["frames_out"] == after["frames_out"]:
        raise RuntimeError(f"ComfyUI and the core gave different frame counts per chunk: "
                           f"{comfy['frames_out']} vs {before['frames_out']}")
    w = args.warmup
    core = {"chunk_s": before["chunk_s"] + after["chunk_s"][w:],  # one warm-up, both runs timed
            "frames_out": before["frames_out"] + after["frames_out"][w:],
            "median_s_before": statistics.median(before["chunk_s"][w:]),
            "median_s_after": statistics.median(after["chunk_s"][w:])}
    c, k = summarise(comfy["job_s"], comfy["frames_out"], w), \
        summarise(core["chunk_s"], core["frames_out"], w)
    device = torch.device("cuda" if args.gpu else "cpu")
    return {
        "name": args.name or f"comfyui-{Path(model).stem}-{args.size}-{device.type}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": bench.device_info(device),
        "versions": bench.versions(),
        "git": bench.git_commit(),
        "args": {**vars(args), "model": model, "out": str(args.out), "base": str(args.base)},
        "results": {"comfyui": {**c, **comfy}, "core": {**k, **core},
                    "overhead_per_job_s": c["median_s"] - k["median_s"],
                    "comfyui_fps_over_core": c["fps"] / k["fps"]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamedit_core bench comfyui",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shipped",
                    help=f"'shipped' (models/{SHIPPED_MODEL.name}), a preset with random weights "
                         f"({', '.join(PRESETS)}), or a .safetensors path")
    ap.add_argument("--size", type=int, default=128, help="frame height = width, a multiple of 8")
    ap.add_argument("--chunk-frames", type=int, default=16, help="frames per job (a multiple of 4)")
    ap.add_argument("--chunks", type=int, default=10, help="timed jobs")
    ap.add_argument("--warmup", type=int, default=2, help="untimed jobs first (model load, buffer fill)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompt", default="make it a sepia photograph")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the server and the core")
    ap.add_argument("--gpu", action="store_true", help="run ComfyUI and the core on CUDA (default: CPU)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per job at most")
    ap.add_argument("--name", default=None, help="result name (default comfyui-<model>-<size>-<device>)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--base", type=Path, default=REPO / ".cache" / "bench-comfyui",
                    help="ComfyUI's base directory (models/, input/, output/) for the run")
    args = ap.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = bench.write_json_atomic(result, args.out / f"{result['name']}.json")
    r = result["results"]
    print(f"ComfyUI: {r['comfyui']['fps']:.2f} FPS, job median {r['comfyui']['median_s'] * 1e3:.0f} ms "
          f"(p95 {r['comfyui']['p95_s'] * 1e3:.0f} ms); core: {r['core']['fps']:.2f} FPS, chunk median "
          f"{r['core']['median_s'] * 1e3:.0f} ms; overhead per job {r['overhead_per_job_s'] * 1e3:.0f} ms")
    print(f"-> {path}")
    return 0
