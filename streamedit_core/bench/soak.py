"""Soak and fault test of the stream nodes in a real ComfyUI (issue 49): many queued chunk jobs,
many abandoned streams, and faults injected mid-stream, each judged against an undisturbed stream.

    .venv/bin/python -m streamedit_core bench soak                       # 1,000 jobs, 200 streams
    .venv/bin/python -m streamedit_core bench soak --jobs 150 --streams 40 --rss-from 50

One ComfyUI server (the harness the e2e tests use, `bench.comfyui`) runs `workflows/stream_chunks.json`
with the shipped model on small frames (a pan over a periodic texture, `bench.speed.pattern_texture`),
one thread, so every run of the same chunk gives the same bits. In order:

1. reference: an undisturbed stream, chunks 0 .. K-1 (their frames are what the faults are judged by);
2. faults on a second stream: an interrupt mid-job, bad inputs (each must fail with its own clear
   error and change nothing), Clear History, /free between jobs and during one, a server restart
   (chunk k > 0 must fail clearly, chunk 0 restarts); after each, the next valid job's frames must
   equal the reference's for that chunk;
3. soak: `--jobs` chunk jobs on one stream, all must succeed; the server's RSS after job
   `--rss-from` and after the last may differ by at most `--rss-bound-mb`; every frame fed comes
   out or is still in flight (nothing lost);
4. streams: `--streams` distinct stream_ids started and abandoned; the registry must hold at most
   its MAX_STREAMS and the RSS must end within `--rss-bound-mb` of where it was before.

Writes bench/results/<name>.json (date, machine, commit, arguments, every number and check) and
prints a summary; exit status 1 when a check fails. Output frames are compared through the PNG
files Preview Image writes: their decompressed image data (IDAT), so no image library is needed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import struct
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..io.checkpoint import SHIPPED_MODEL
from ..io.video import VideoWriter
from . import speed as bench
from .comfyui import COMFYUI_ROOT, REPO, ComfyClient, ComfyServer, PromptRejected, ui_to_api
from .comfyui_bench import job_prompt, place_model, write_clip

WORKFLOW = REPO / "workflows" / "stream_chunks.json"
CLIP = "soak_pan.mp4"
ODD_CLIP = "soak_odd36.mp4"  # 36 x 36: not a multiple of the STLE's stride
BIG_CLIP = "soak_1080p.mp4"  # one 1920 x 1080 frame: 128-frame chunks of it are past MAX_CHUNK_PIXELS
PROMPT = "make it a sepia photograph"
REFERENCE_CHUNKS = 8
FAULT_CHUNK_FRAMES = 16  # 4 latent frames a job: frames from chunk 1 on (6 steps: 5 warm up), long enough to interrupt


# --- PNG image data, without an image library -----------------------------------------------
def png_pixels(path: Path) -> bytes:
    """The decompressed image data of a PNG (its IDAT chunks): equal for equal pixels written with
    the same settings, whatever text metadata (the prompt, the workflow) the file carries."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return zlib.decompress(b"".join(idat))


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


class Soak:
    """One server, one client, the workflow template, and the log of everything checked."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        self.args, self.log = args, log
        self.base: Path = args.base
        self.server: ComfyServer | None = None
        self.client: ComfyClient | None = None
        self.template: dict | None = None
        self.model = ""
        self.checks: list[dict[str, Any]] = []  # {"check", "ok", ...}
        self.chunk_frames = FAULT_CHUNK_FRAMES  # frames per job now (the soak's own for the soak)

    # -- server --

    def start(self) -> float:
        t = time.perf_counter()
        self.server = ComfyServer(self.base, threads=self.args.threads)
        self.server.start()
        self.client = ComfyClient(self.server.url)
        if self.template is None:
            self.template = ui_to_api(json.loads(WORKFLOW.read_text()), self.client.object_info())
        return time.perf_counter() - t

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.server is not None:
            self.server.stop()

    def rss(self) -> float:
        return rss_mb(self.server.proc.pid)

    def held(self) -> dict[str, Any]:
        return self.client.request("GET", "/streamedit/streams")

    # -- jobs --

    def prompt(self, stream_id: str, chunk: int, **change: Any) -> dict:
        """The soak's workflow for one chunk; `change`: prompt, video, chunk_frames or DiT Sampler inputs."""
        change = {"prompt": PROMPT, "video": CLIP, "chunk_frames": self.chunk_frames, "steps": self.args.steps,
                  **change}
        return job_prompt(self.template, model=self.model, stream_id=stream_id, chunk=chunk, **change)

    def run(self, api: dict, on_event=None):
        return self.client.wait(self.client.queue(api), timeout=self.args.timeout, on_event=on_event)

    def frames(self, result, api: dict) -> list[bytes]:
        """The image data of each frame the job's Preview Image wrote (none while the buffer fills)."""
        outputs = self.client.history(result.prompt_id).get("outputs", {})
        images = [img for i, n in api.items() if n["class_type"] == "PreviewImage"
                  for img in outputs.get(i, {}).get("images", [])]
        return [png_pixels(self.base / img["type"] / img["subfolder"] / img["filename"]) for img in images]

    def ok(self, stream_id: str, chunk: int, **change: Any) -> list[bytes]:
        api = self.prompt(stream_id, chunk, **change)
        result = self.run(api)
        if result.status != "execution_success":
            raise RuntimeError(f"stream {stream_id!r} chunk {chunk} ended with {result.status}: "
                               f"{result.error}\n{self.server.log()[-3000:]}")
        return self.frames(result, api)

    def check(self, name: str, ok: bool, **detail: Any) -> bool:
        self.checks.append({"check": name, "ok": bool(ok), **detail})
        self.log(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail and not ok else ""))
        return bool(ok)


# --- the phases ----------------------------------------------------------------------------
def reference(s: Soak) -> list[list[bytes]]:
    s.log(f"reference: an undisturbed stream, chunks 0..{REFERENCE_CHUNKS - 1}")
    stream = f"ref-{uuid.uuid4().hex[:6]}"
    ref = [s.ok(stream, k) for k in range(REFERENCE_CHUNKS)]
    s.check("the reference gives frames from chunk 1 on (chunk 0 fills the buffer)",
            not ref[0] and all(ref[1:]), frames=[len(r) for r in ref])
    return ref


def faults(s: Soak, ref: list[list[bytes]]) -> dict[str, Any]:
    """Faults on one stream; after each, the next valid chunk must equal the reference's."""
    stream = f"flt-{uuid.uuid4().hex[:6]}"
    survived, bad_inputs, compared = [], [], []

    def same(k: int, after: str | None = None) -> bool:
        """Chunk k, which must equal the reference's; `after`: the fault it follows."""
        got = s.ok(stream, k)
        ok = s.check(f"chunk {k}{f' after {after}' if after else ''} equals the undisturbed stream's",
                     got == ref[k], frames=len(got), expected=len(ref[k]))
        compared.append({"chunk": k, "frames": len(got), "identical": got == ref[k]})
        if after is not None:
            survived.append({"fault": after, "next_chunk": k, "identical": got == ref[k]})
        return ok

    def error(name: str, api: dict, *needles: str, rejected: bool = False, bad: bool = True) -> None:
        """A job that must fail with a clear error naming the problem, changing nothing: a bad
        input, or a chunk the fault before it made impossible (bad=False)."""
        if rejected:
            try:
                s.client.queue(api)
                message, ok = "queued", False
            except PromptRejected as e:
                message, ok = json.dumps(e.body.get("node_errors", e.body))[:300], True
        else:
            result = s.run(api)
            message = (result.error or {}).get("exception_message", result.status)
            ok = result.status == "execution_error" and all(n in message for n in needles)
        if bad:
            bad_inputs.append({"input": name, "error": message.strip().splitlines()[0][:300], "clear": ok})
        s.check(f"{'bad input: ' if bad else ''}{name}: a clear error", ok, message=message[:300])

    s.log("faults")
    same(0)
    same(1)

    # 1. interrupt mid-job: the chunk is rolled back and queued again
    def interrupt(event):
        if event["type"] == "progress":
            s.client.interrupt()

    result = s.run(s.prompt(stream, 2), on_event=interrupt)
    landed = result.status == "execution_interrupted"
    s.log(f"  interrupt: {'landed mid-job' if landed else 'came after the job ended'}")
    same(2 if landed else 3, "an interrupt" if landed else "an interrupt after the job ended")
    if landed:
        same(3)

    # 2. bad inputs, each a clear error that leaves the stream as it was
    error("chunk_index that skips chunks", s.prompt(stream, 6), "skips chunks", "next chunk is 4")
    error("chunk_index that repeats a chunk", s.prompt(stream, 3), "repeats a chunk", "next chunk is 4")
    error("another seed mid-stream", s.prompt(stream, 4, seed=7), "was started with", "'seed': 7")
    error("empty prompt", s.prompt(stream, 4, prompt="   "), "prompt is empty")
    error("video path outside the input folder", s.prompt(stream, 4, video="../../etc/passwd"),
          "outside ComfyUI's folder")
    error("missing video", s.prompt(stream, 4, video="no_such_video.mp4"), "does not exist")
    error("frame size not a multiple of 8", s.prompt(stream, 4, video=ODD_CLIP), "is not supported")
    error("chunk past MAX_CHUNK_PIXELS", s.prompt(stream, 4, video=BIG_CLIP, chunk_frames=128),
          "MAX_CHUNK_PIXELS")
    error("chunk_frames not a multiple of 4", s.prompt(stream, 4, chunk_frames=6), "multiple of 4")
    error("steps 0 (refused by the schema)", s.prompt(stream, 4, steps=0), rejected=True)
    same(4, "bad inputs")

    # 3. Clear History: the chunks it had reported stay committed
    s.client.request("POST", "/history", {"clear": True})
    same(5, "Clear History")

    # 4. /free between jobs: the stream is gone (a clear error), chunk 0 starts it again
    s.client.free()
    error("chunk 6 after /free", s.prompt(stream, 6), "does not exist", "/free", bad=False)
    same(0, "/free")
    for k in range(1, 6):
        same(k)

    # 5. /free during a job: the job's nodes keep one stream; it goes when the job ends
    def free(event):
        if event["type"] == "progress" and free.mid_job is None:
            s.client.free()
            free.mid_job = s.held()["in_jobs"] > 0  # the job still had the stream open

    free.mid_job = None
    api = s.prompt(stream, 6)
    result = s.run(api, on_event=free)
    got = s.frames(result, api) if result.status == "execution_success" else None
    s.log(f"  /free during a job: {'landed while the job held the stream' if free.mid_job else 'came late'}")
    s.check("chunk 6 with a /free during its job equals the undisturbed stream's", got == ref[6],
            status=result.status)
    survived.append({"fault": "/free during a job", "next_chunk": 6, "identical": got == ref[6],
                     "landed_mid_job": bool(free.mid_job)})
    error("chunk 7 after a /free during chunk 6", s.prompt(stream, 7), "does not exist", "/free", bad=False)
    same(0)
    same(1)

    # 6. server restart: every stream is gone; chunk k > 0 is a clear error, chunk 0 restarts
    s.stop()
    restart_s = s.start()
    s.log(f"  server restarted in {restart_s:.1f} s")
    error("chunk 2 after a server restart", s.prompt(stream, 2), "does not exist", "server restart", bad=False)
    same(0, "a server restart")
    same(1)
    return {"survived": survived, "bad_inputs": bad_inputs, "compared": compared,
            "interrupt_landed": landed, "restart_s": round(restart_s, 1)}


def soak(s: Soak) -> dict[str, Any]:
    jobs, rss_from = s.args.jobs, s.args.rss_from
    s.log(f"soak: {jobs} chunk jobs on one stream")
    s.chunk_frames = s.args.chunk_frames
    stream = f"soak-{uuid.uuid4().hex[:6]}"
    job_s, frames_out, rss = [], 0, {}
    for k in range(jobs):
        t = time.perf_counter()
        frames_out += len(s.ok(stream, k))
        job_s.append(time.perf_counter() - t)
        if s.args.clear_history_every and (k + 1) % s.args.clear_history_every == 0:
            s.client.request("POST", "/history", {"clear": True})  # ComfyUI keeps 10,000 jobs' history
        if k + 1 in (rss_from, jobs) or (k + 1) % 100 == 0:
            rss[k + 1] = s.rss()
            s.log(f"  job {k + 1}: RSS {rss[k + 1]:.0f} MiB, job median {statistics.median(job_s) * 1e3:.0f} ms")
    fed = jobs * s.args.chunk_frames
    in_flight = min(fed, (s.args.steps - 1) * 4)  # the warm-up latent frames, still in the buffer
    growth = rss[jobs] - rss[rss_from]
    s.check(f"all {jobs} jobs succeeded", True)
    s.check(f"RSS after job {jobs} within {s.args.rss_bound_mb} MiB of after job {rss_from}",
            growth <= s.args.rss_bound_mb, growth_mb=round(growth, 1))
    s.check("nothing lost: frames out + frames in flight = frames fed", frames_out + in_flight == fed,
            fed=fed, out=frames_out, in_flight=in_flight)
    return {"jobs": jobs, "job_median_s": statistics.median(job_s), "job_p95_s": bench.percentile(job_s, 95),
            "rss_mb": {str(k): round(v, 1) for k, v in rss.items()}, "rss_growth_mb": round(growth, 1),
            "frames_fed": fed, "frames_out": frames_out, "frames_in_flight": in_flight}


def streams(s: Soak) -> dict[str, Any]:
    n = s.args.streams
    s.log(f"streams: {n} distinct stream_ids started and abandoned")
    before_rss, before = s.rss(), s.held()
    for i in range(n):
        s.ok(f"abandoned-{i}-{uuid.uuid4().hex[:4]}", 0)
    after_rss, after = s.rss(), s.held()
    s.check(f"streams held after {n} abandoned: {after['streams']} <= {after['max_streams']} (MAX_STREAMS)",
            after["streams"] <= after["max_streams"])
    s.check(f"RSS after {n} abandoned streams within {s.args.rss_bound_mb} MiB of before",
            after_rss - before_rss <= s.args.rss_bound_mb, before=round(before_rss), after=round(after_rss))
    return {"opened": n, "held_before": before["streams"], "held_after": after["streams"],
            "max_streams": after["max_streams"], "state_bytes_after": after["state_bytes"],
            "rss_before_mb": round(before_rss, 1), "rss_after_mb": round(after_rss, 1)}


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    if not (COMFYUI_ROOT / "main.py").is_file():
        raise ValueError(f"no ComfyUI at {COMFYUI_ROOT}: run `make comfyui` first")
    if args.jobs < max(args.rss_from, 1) or args.rss_from < 1:
        raise ValueError(f"need 1 <= --rss-from <= --jobs, got {args.rss_from} and {args.jobs}")
    if args.size % 8 or args.chunk_frames % 4:
        raise ValueError("--size must be a multiple of 8 and --chunk-frames a multiple of 4")
    s = Soak(args, log)
    for sub in ("output", "temp"):  # a fresh run: no files of an earlier one to mix up
        shutil.rmtree(s.base / sub, ignore_errors=True)
    ComfyServer(s.base).prepare()
    s.model, _ = place_model(args.model, s.base / "models" / "streamedit")
    frames = max(args.chunk_frames * args.jobs, FAULT_CHUNK_FRAMES * REFERENCE_CHUNKS)
    write_clip(s.base / "input" / CLIP, args.size, frames)
    with VideoWriter(s.base / "input" / ODD_CLIP, 8, 36, 36) as w:  # chunk 4 of 16-frame chunks exists
        w.write(bench.pan(bench.pattern_texture(36), 0, 5 * FAULT_CHUNK_FRAMES).float() / 255)
    with VideoWriter(s.base / "input" / BIG_CLIP, 8, 1920, 1080) as w:
        w.write(torch.zeros(1, 1080, 1920, 3))
    started = time.perf_counter()
    s.start()
    try:
        ref = reference(s)
        fault = faults(s, ref)
        long = soak(s)
        many = streams(s)
    finally:
        s.stop()
    failed = [c["check"] for c in s.checks if not c["ok"]]
    return {
        "name": args.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "device": bench.device_info(torch.device("cpu")),
        "versions": bench.versions(),
        "git": bench.git_commit(),
        "args": {**vars(args), "model": s.model, "out": str(args.out), "base": str(args.base)},
        "seconds": round(time.perf_counter() - started, 1),
        "results": {"faults": fault, "soak": long, "streams": many, "checks": s.checks,
                    "summary": summary(fault, long, many, s.checks)},
        "passed": not failed,
        "failed": failed,
    }


def summary(fault: dict, long: dict, many: dict, checks: list[dict]) -> dict[str, Any]:
    return {
        "jobs_held": long["jobs"],
        "faults_survived": f"{sum(f['identical'] for f in fault['survived'])}/{len(fault['survived'])}",
        "faults": [f["fault"] for f in fault["survived"]],
        "bad_inputs_clear": f"{sum(b['clear'] for b in fault['bad_inputs'])}/{len(fault['bad_inputs'])}",
        "chunks_identical": f"{sum(c['identical'] for c in fault['compared'])}/{len(fault['compared'])}",
        "streams_abandoned": many["opened"], "streams_held_after": many["held_after"],
        "rss_growth_mb": long["rss_growth_mb"],
        "frames_lost": long["frames_fed"] - long["frames_out"] - long["frames_in_flight"],
        "checks_passed": f"{sum(c['ok'] for c in checks)}/{len(checks)}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamedit_core bench soak",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shipped",
                    help=f"'shipped' (models/{SHIPPED_MODEL.name}), a preset with random weights, or a path")
    ap.add_argument("--jobs", type=int, default=1000, help="chunk jobs on the soak stream")
    ap.add_argument("--rss-from", type=int, default=100, help="the job after which the RSS baseline is read")
    ap.add_argument("--rss-bound-mb", type=float, default=64.0,
                    help="how much the server's RSS may grow after --rss-from (and over --streams)")
    ap.add_argument("--clear-history-every", type=int, default=0,
                    help="POST /history clear after every N soak jobs (0: never), to tell ComfyUI's own "
                         "history from the streams' memory")
    ap.add_argument("--streams", type=int, default=200, help="distinct stream_ids started and abandoned")
    ap.add_argument("--size", type=int, default=32, help="frame height = width (small: the soak is about "
                                                         "the server's life, not the model's speed)")
    ap.add_argument("--chunk-frames", type=int, default=4, help="frames per job (one latent frame)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1,
                    help="server CPU threads (one: the same chunk always gives the same bits)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per job at most")
    ap.add_argument("--name", default="cpu-comfyui-soak")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--base", type=Path, default=REPO / ".cache" / "bench-soak",
                    help="ComfyUI's base directory for the run")
    args = ap.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        result = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = bench.write_json_atomic(result, args.out / f"{result['name']}.json")
    print(json.dumps(result["results"]["summary"], indent=1))
    print(("passed" if result["passed"] else f"FAILED: {result['failed']}") + f" in {result['seconds']:.0f} s -> {path}")
    return 0 if result["passed"] else 1
