"""`make demo` (`python -m streamedit_core demo`): the "edit a video file" workflow in a real,
headless ComfyUI on a bundled clip.

Starts ComfyUI (from `.cache/comfyui`, see `make comfyui`) with this repo as a custom node,
queues `workflows/edit_video_file.json` over the HTTP API as the web UI would, waits for it on
the WebSocket, then writes `out/demo/edited.mp4` and a side-by-side PNG (source | edited) and
stops the server.

The workflow runs as shipped: its prompt, and its clip `workflows/streamedit_example.mp4` (64
frames of real camera footage, 176x144, that the nodes put into ComfyUI's input folder). The
model is the shipped demo model,
`models/streamedit_demo.safetensors` (trained by `make train-demo`); in a checkout without it
the demo says so plainly and runs the `tiny` preset with random weights, whose output does NOT
show the edit.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..eval.report import write_png
from ..io.checkpoint import SHIPPED_MODEL, save_checkpoint
from ..io.video import EXAMPLE_CLIP, VideoReader  # the nodes put the clip into ComfyUI's input/
from ..model import StreamEditModel
from .comfyui import COMFYUI_ROOT, REPO, ComfyClient, ComfyServer, ui_to_api

WORKFLOW = REPO / "workflows" / "edit_video_file.json"
log = logging.getLogger(__name__)


def place_model(models_dir: Path) -> str:
    """The name of the model for the loader: the shipped one (the nodes list this package's
    models/ folder themselves), else random tiny weights written to ComfyUI's models/streamedit/."""
    if SHIPPED_MODEL.is_file():
        return SHIPPED_MODEL.name
    models_dir.mkdir(parents=True, exist_ok=True)
    log.warning("The shipped demo model (%s) is not in this checkout yet: it is trained by "
                "`make train-demo` (issue 7). Running the tiny preset with RANDOM weights instead: "
                "the pipeline runs end to end, but the output does not show the edit.",
                SHIPPED_MODEL.relative_to(REPO))
    name = "tiny_random.safetensors"
    save_checkpoint(StreamEditModel.from_preset("tiny", seed=0), models_dir / name)
    return name


def side_by_side(source: Path, edited: Path, out: Path, frames: int = 3) -> int:
    """PNG of `frames` evenly spaced frames: source on top, edited below; the edited video's
    frame count."""
    src = torch.cat(list(VideoReader(source, chunk_frames=64)))  # [T, H, W, 3]; a short clip
    dst = torch.cat(list(VideoReader(edited, chunk_frames=64)))
    idx = torch.linspace(0, min(len(src), len(dst)) - 1, frames).long()
    rows = [torch.cat(list(v[idx]), dim=1) for v in (src, dst)]  # [H, frames*W, 3] each
    write_png(torch.cat(rows, dim=0), out)
    return len(dst)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamedit_core demo",
                                 description="The edit-a-video-file workflow in a real, headless "
                                             "ComfyUI on a bundled clip.")
    ap.add_argument("--prompt", default=None, help="another prompt than the workflow's")
    ap.add_argument("--clip", type=Path, default=None, help="another video than the workflow's example clip")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    # the demo's progress lines, plainly (the CLI set WARNING with level and name prefixes)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if not (COMFYUI_ROOT / "main.py").is_file():
        raise SystemExit(f"error: no ComfyUI at {COMFYUI_ROOT}: run `make comfyui` first")

    base = REPO / ".cache" / "demo-comfyui"  # ComfyUI's base directory for the demo
    clip = args.clip or EXAMPLE_CLIP
    if not clip.is_file():
        raise SystemExit(f"error: no video at {clip}")
    server = ComfyServer(base)
    server.prepare()
    if args.clip:
        shutil.copy2(clip, base / "input" / clip.name)
    model_name = place_model(base / "models" / "streamedit")
    args.out.mkdir(parents=True, exist_ok=True)

    log.info("starting ComfyUI (headless, --cpu) from %s ...", COMFYUI_ROOT)
    server.start()
    try:
        client = ComfyClient(server.url)
        workflow = json.loads(WORKFLOW.read_text())
        prompt = ui_to_api(workflow, client.object_info())
        for node in prompt.values():
            if node["class_type"] == "StreamEditModelLoader":
                node["inputs"]["ckpt_name"] = model_name
            if node["class_type"] == "StreamEditTextEncode" and args.prompt:
                node["inputs"]["prompt"] = args.prompt
            if node["class_type"] == "StreamEditEditVideo" and args.clip:
                node["inputs"]["video"] = clip.name
        asked = next(n["inputs"]["prompt"] for n in prompt.values() if n["class_type"] == "StreamEditTextEncode")
        log.info("queued %s with prompt %r on %s", WORKFLOW.name, asked, clip.name)
        t0 = time.monotonic()
        result = client.wait(client.queue(prompt), timeout=args.timeout)
        seconds = time.monotonic() - t0
        if result.status != "execution_success":
            raise SystemExit(f"error: the job ended with {result.status}: {result.error}")
        outputs = client.history(result.prompt_id)["outputs"]
        saved = next(o["images"][0] for o in outputs.values() if o.get("images"))
        client.close()
    finally:
        server.stop()

    produced = base / "output" / saved["subfolder"] / saved["filename"]
    edited = args.out / "edited.mp4"
    shutil.copy2(produced, edited)
    png = args.out / "side_by_side.png"
    n = side_by_side(clip, edited, png)
    print(f"edited video:  {edited}")
    print(f"side by side:  {png} (top: source, bottom: edited)")
    print(f"{n} frames in {seconds:.1f} s through ComfyUI: {n / seconds:.2f} FPS on "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU'} (model: {model_name})")
    print("To open the same workflow in the web UI:\n"
          f"  cd {COMFYUI_ROOT} && {sys.executable} main.py --cpu --base-directory {base} "
          "--listen 127.0.0.1 --port 8188\n"
          f"  then browse to http://127.0.0.1:8188 and drag {WORKFLOW} onto the canvas.")
    return 0
