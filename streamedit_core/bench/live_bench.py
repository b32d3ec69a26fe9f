"""`python -m streamedit_core bench live`: what a live session delivers, glass to glass.

For each frame size: the live server (`python -m streamedit_core live`, a process of its own),
the page in a real headless Chromium whose fake camera is a coded clip (`bench.browser`), a
grayscale prompt. For each number of steps (switched with the page's own steps selector, the
editor rebuilt and warmed up each time) it records `--seconds` of the page and reports:

- input / output FPS: distinct camera / edited frames the page showed per second;
- latency p50/p95/p99: from a frame's showing as the camera preview to its showing edited (frame
  codes match them up), with the server's own per-frame split: queue (waiting for a group of 4
  and the editor), pipeline (the staggered buffer: (steps - 1) groups), compute (the releasing
  editor call), pacing (spreading a group over its period); transport = the page's median minus
  the server's (both ways: encode, network, decode, jitter buffer, display);
- dropped share: camera frames the scheduler dropped (never queued);
- edit strength: the edited frames' saturation over their source's (grayscale: lower = stronger);
- CPU: the share of the machine the server and the browser used;
- with --quality, the edit benchmark's headline at each step count (`eval.runner.evaluate`, run
  before the server starts).

Writes `bench/results/<name>-<size>.json` (the envelope of the other benchmarks: device,
versions, commit, arguments, results).

    python -m streamedit_core bench live                                  # 64 and 128 px, 6/4/2/1 steps
    python -m streamedit_core bench live --preset 2b --text random --sizes 512 --device cuda --steps 6,2
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..live.session import SIZE_MIN, STEPS_MAX, FrameTiming, dominant, percentile
from ..types import resolve_device
from . import speed
from .browser import FrameCode, LivePage, chromium, first_showings, make_fake_camera, match_latency, wait_until
from .comfyui import REPO

PROMPT = "make it black and white"


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": None if (v := percentile(list(values), q)) is None else round(v, 1) for q in (50, 95, 99)}


class Server:
    """The live server as a process; `url` once it listens."""

    def __init__(self, args: argparse.Namespace, size: int, steps: int, log_path: Path) -> None:
        cmd = [sys.executable, "-m", "streamedit_core", "live", "--port", "0", "--size", str(size),
               "--steps", str(steps), "--prompt", PROMPT, "--idle-timeout", "60",
               "--max-latency", str(args.max_latency)]
        cmd += ["--preset", args.preset] if args.preset else (["--checkpoint", args.checkpoint] if args.checkpoint else [])
        cmd += ["--device", args.device] if args.device else []
        cmd += ["--text-ensemble", args.text] if args.text else []
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else None
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.url = ""
        for line in self.proc.stdout:
            m = re.search(r"(http://\S+/)", line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"the live server did not start: {log_path.read_text()[-3000:]}")

    def get(self, path: str) -> dict:
        import json
        import urllib.request
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def cpu_seconds(pids_of) -> dict[str, float]:
    import psutil
    out = {}
    for name, pids in pids_of().items():
        total = 0.0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        out[name] = total
    return out


def measure(page: LivePage, server: Server, session: str, seconds: float, steps: int, loop_ms: float,
            pids_of) -> dict[str, Any]:
    """One window of `seconds` at the current settings (`loop_ms`: the camera's loop)."""
    s0 = server.get(f"api/sessions/{session}")
    c0, t0 = cpu_seconds(pids_of), time.monotonic()
    page.clear_frames()
    time.sleep(seconds)
    source, edited = page.frames("source"), page.frames("edited")
    s1 = server.get(f"api/sessions/{session}?frames=1")
    c1, wall = cpu_seconds(pids_of), time.monotonic() - t0
    assert s1["steps"] == steps, (s1["steps"], steps)

    matched = match_latency(source, edited, max_ms=loop_ms / 2)
    glass = [m[1] for m in matched]
    window = [f for f in s1["frames"] if f["t_sent"] >= s1["clock"] - seconds]
    server_total = [1000 * (f["t_sent"] - f["t_in"]) for f in window]
    parts = [FrameTiming(**f).split() for f in window]
    split = {k: round(1000 * statistics.median(p[k] for p in parts), 1) if parts else None
             for k in ("queue", "pipeline", "compute", "pacing")}
    if glass and server_total:
        split["transport"] = round(statistics.median(glass) - statistics.median(server_total), 1)
    d_in = s1["frames_in"] - s0["frames_in"]
    d_drop = s1["frames_dropped"] - s0["frames_dropped"]
    sat = [(m[3]["sat"], m[2]["sat"]) for m in matched]
    cores = os.cpu_count() or 1
    return {
        "steps": steps, "seconds": round(wall, 1),
        "input_fps": round(len(first_showings(source)) / seconds, 2),
        "output_fps": round(len(first_showings(edited)) / seconds, 2),
        "latency_ms": percentiles(glass), "frames_matched": len(matched),
        "server_latency_ms": percentiles(server_total),
        "split_ms": split, "dominant": dominant(split),
        "pipeline_frames": (steps - 1) * 4,
        "model_ms_per_step": split["compute"],
        "dropped_share": round(d_drop / d_in, 4) if d_in else None,
        "edit_saturation_ratio": round(statistics.mean(a for a, _ in sat) / statistics.mean(b for _, b in sat), 4)
        if sat else None,
        "cpu_share": {k: round((c1[k] - c0[k]) / wall / cores, 3) for k in c1},
    }


def quality(args: argparse.Namespace, steps: Sequence[int]) -> dict[int, dict]:
    """The edit benchmark's headline at each step count (64 x 64 test pairs)."""
    from ..eval.runner import evaluate
    from ..io.checkpoint import checkpoint_or_shipped, load_model
    from ..model.text import TextEnsemble

    model = load_model(checkpoint_or_shipped(args.checkpoint, args.preset), preset=args.preset,
                       device=args.device or "cpu")
    text = TextEnsemble.for_model(model.config)
    out = {}
    for k in steps:
        result, _ = evaluate(model, text, split="test", limit=args.quality_pairs, steps=k)
        out[k] = {key: result[key] for key in ("pairs", "psnr", "ssim", "adherence", "flicker_ratio", "eval_seconds")}
        print(f"quality at {k} steps: {out[k]}", flush=True)
    return out


def bench_size(args: argparse.Namespace, size: int, steps_list: Sequence[int], folder: Path) -> list[dict]:
    code = FrameCode(block=8 / size)
    frames = min(code.period, int(args.loop_seconds * args.camera_fps))
    camera = make_fake_camera(folder / f"camera{size}.y4m", frames=frames, fps=args.camera_fps,
                              width=args.camera_size[0], height=args.camera_size[1], code=code)
    server = Server(args, size, steps_list[0], folder / f"server{size}.log")
    rows = []
    try:
        import psutil
        me = psutil.Process(os.getpid())

        def pids_of() -> dict[str, list[int]]:
            kids = me.children(recursive=True)
            return {"server": [server.proc.pid],
                    "browser": [p.pid for p in kids if p.pid != server.proc.pid and "chrom" in p.name().lower()]}

        with chromium(camera) as browser:
            page = LivePage(browser, server.url + f"?steps={steps_list[0]}", code)
            session = page.start()
            page.wait_edited(1, timeout=300)
            for k in steps_list:
                if server.get(f"api/sessions/{session}")["steps"] != k:
                    page.page.select_option("#steps", str(k))
                    wait_until(lambda: (s := server.get(f"api/sessions/{session}"))["steps"] == k
                               and s["frames_edited"] > 0, 120, what=f"edited frames at {k} steps")
                time.sleep(args.settle)
                row = measure(page, server, session, args.seconds, k, 1000 * frames / args.camera_fps, pids_of)
                if args.quality_results:
                    row["quality"] = args.quality_results.get(k)
                print(f"{size} px, {k} steps: {row['output_fps']} FPS out, latency p50 {row['latency_ms']['p50']} ms "
                      f"p95 {row['latency_ms']['p95']} ms, split {row['split_ms']}, dropped {row['dropped_share']}",
                      flush=True)
                rows.append(row)
            page.close()
    finally:
        server.stop()
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streamedit_core bench live", description=__doc__.splitlines()[0])
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default=None, help="default: the shipped demo model")
    model.add_argument("--preset", default=None, help="random weights of a preset")
    p.add_argument("--sizes", default="64,128", help="session frame sizes, comma separated")
    p.add_argument("--steps", default="6,4,2,1", help="step counts, comma separated (the first is warmed up)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per step count")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after a steps change before measuring")
    p.add_argument("--camera-fps", type=int, default=30)
    p.add_argument("--camera-size", default="256x192", help="the fake camera's WxH")
    p.add_argument("--loop-seconds", type=float, default=20.0, help="the fake camera's loop (> 2 x the latency)")
    p.add_argument("--max-latency", type=float, default=1.0, help="the server's --max-latency")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    p.add_argument("--device", default=None, help="the server's torch device")
    p.add_argument("--text", default=None, help="the server's --text-ensemble (random: for presets without encoders)")
    p.add_argument("--quality", action="store_true", help="also the edit benchmark at each step count")
    p.add_argument("--quality-pairs", type=int, default=None, help="with --quality: the first N test pairs")
    p.add_argument("--name", default=None, help="result name prefix (default <device>-live-<model>)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        steps = [int(x) for x in args.steps.split(",") if x.strip()]
        w, h = (int(x) for x in args.camera_size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes and --steps are comma-separated ints, --camera-size WxH; got "
                         f"{args.sizes!r}, {args.steps!r}, {args.camera_size!r}") from None
    if not sizes or not steps or any(s % 8 or s < SIZE_MIN for s in sizes) or any(not 1 <= k <= STEPS_MAX for k in steps):
        raise ValueError(f"sizes must be multiples of 8 (>= {SIZE_MIN}) and steps in [1, {STEPS_MAX}]; "
                         f"got {sizes}, {steps}")
    args.camera_size = (w, h)
    args.quality_results = quality(args, steps) if args.quality else None
    device = resolve_device(args.device)
    model = Path(args.checkpoint).stem if args.checkpoint else (args.preset or "shipped")
    prefix = args.name or f"{device.type}-live-{model}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = speed.device_info(device)
    if args.threads:
        info["threads"] = args.threads
    with tempfile.TemporaryDirectory(prefix="streamedit-bench-live-") as tmp:
        for size in sizes:
            rows = bench_size(args, size, steps, Path(tmp))
            result = {
                "name": f"{prefix}-{size}",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "device": info, "versions": speed.versions(), "git": speed.git_commit(),
                "args": {**{k: v for k, v in vars(args).items() if k != "quality_results"}, "size": size,
                         "model": model, "prompt": PROMPT},
                "results": {"live": rows},
            }
            path = speed.write_json_atomic(result, out / f"{result['name']}.json")
            print(f"-> {path}", flush=True)
    return 0
