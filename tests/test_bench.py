"""`python -m streamedit_core bench`: both modes on the tiny preset at small sizes (CPU), the JSON
they write, the flex_attention record, and every bad input. The H100 numbers come from the GPU
session (bench/README.md); the CUDA test at the end runs there."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamedit_core.bench import speed as bench
from streamedit_core.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

TOP_KEYS = {"name", "date", "device", "versions", "git", "args", "preset", "results", "targets"}


def run_bench(tmp_path: Path, *args: str) -> dict:
    """cli main in-process (the `bench` forwarding path); returns the JSON it wrote."""
    assert cli_main(["bench", *args, "--out", str(tmp_path), "--name", "r"]) == 0
    return json.loads((tmp_path / "r.json").read_text())


def check_envelope(d: dict) -> None:
    assert TOP_KEYS <= set(d)
    assert d["date"].endswith("+00:00")
    assert {"type", "name", "count", "capability"} <= set(d["device"])
    assert d["versions"]["torch"] == torch.__version__ and d["versions"]["python"]
    assert "cuda" in d["versions"] and "cupy" in d["versions"]
    assert set(d["git"]) == {"commit", "dirty"}
    assert d["preset"]["name"] == d["args"]["preset"] == "tiny"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attention_mode_json_density_and_same_mask_as_flex(tmp_path):
    d = run_bench(tmp_path, "attention", "--preset", "tiny", "--size", "64", "--flex", "eager",
                  "--iters", "2", "--warmup", "1", "--densities", "12.5,25,50,100")
    check_envelope(d)
    att = d["results"]["attention"]
    s = att["shapes"]
    # tiny at 64 px: 8x8 latents, patch 2 -> 16 tokens per frame; 8 frames; 4 heads x 20
    assert (s["frame_tokens"], s["tokens"], s["heads"], s["head_dim"]) == (16, 128, 4, 20)
    assert att["ours_impl"] == "torch-reference"  # the CPU (and head dim 20): no kernel
    nk = s["tokens"] / s["block_size"]
    assert [r["density"] for r in att["rows"]] == [0.125, 0.25, 0.5, 1.0]
    for r in att["rows"]:
        # top-k keeps ceil(density * nk) blocks per row; the forced ones (1 block here) fit in it
        assert abs(r["kept"] - r["density"]) < 1 / nk
        for b in ("dense", "ours", "flex"):
            assert r[b]["ms"] > 0 and r[b]["tflops"] > 0
        # flex_attention got the very same mask: same output as ours
        assert r["flex_max_abs_diff_vs_ours"] < 1e-5
        assert r["ours_speedup_vs_dense"] == pytest.approx(r["dense"]["ms"] / r["ours"]["ms"])
    assert d["targets"]["attention"]["applies"] is False  # not the 2b preset on CUDA
    assert d["targets"]["attention"]["dsa_speedup_vs_dense_at_25"]["pass"] is None


def test_flex_compiled_is_measured_or_recorded_unsupported(tmp_path):
    d = run_bench(tmp_path, "attention", "--preset", "tiny", "--size", "32", "--window", "4",
                  "--iters", "1", "--warmup", "1", "--densities", "50")
    (row,) = d["results"]["attention"]["rows"]
    flex = row["flex"]
    if "error" in flex:  # e.g. no working C++ toolchain for inductor on this CPU
        assert flex["error"].startswith("unsupported on cpu: "), flex
        assert "ours_speedup_vs_flex" not in row and "ms" not in flex
        assert row["ours"]["ms"] > 0  # the other backends were still measured
    else:
        assert flex["ms"] > 0 and row["flex_max_abs_diff_vs_ours"] < 1e-4


def test_flex_off_is_recorded(tmp_path):
    d = run_bench(tmp_path, "attention", "--preset", "tiny", "--size", "32", "--window", "2",
                  "--iters", "1", "--warmup", "0", "--densities", "100", "--flex", "off")
    assert d["results"]["attention"]["rows"][0]["flex"] == {"backend": "flex", "error": "not run (--flex off)"}


def test_stream_mode_latency_fps_first_frame(tmp_path, capsys):
    d = run_bench(tmp_path, "stream", "--preset", "tiny", "--size", "64", "--frames", "24",
                  "--steps", "2", "--warmup", "1", "--text", "random", "--breakdown")
    check_envelope(d)
    st = d["results"]["stream"]
    assert st["frames_fed"] == 24 and len(st["chunk_ms"]) == 6
    assert st["dsa_impl"] == "torch-reference"
    # the history is pinned to the preset's window_max (4 for tiny): window = 4 + 2 steps
    assert st["history_frames"] == st["history_frames_at_end"] == 4 and st["window_frames"] == 6
    # 2 steps: the first chunk only fills the buffer, each later chunk gives 4 frames
    assert st["frames_out"] == 20 and st["steady_chunks"] == 4
    assert st["fps"] > 0 and st["fps_whole_stream"] > 0
    assert 0 < st["chunk_ms_p50"] <= st["chunk_ms_p95"] <= st["chunk_ms_max"]
    # the first frames come out of the 2nd feed: its and the 1st feed's time
    assert st["time_to_first_frame_s"] == pytest.approx(sum(st["chunk_ms"][:2]) / 1e3)
    assert st["peak_memory_gb"] > 0 and "RSS" in st["peak_memory_kind"]
    assert set(st["stage_ms_per_chunk"]) == {"stle_encode", "dit", "stle_decode"}
    assert all(v > 0 for v in st["stage_ms_per_chunk"].values())
    assert st["text"].startswith("random token states") and "cached" in st["text"]
    t = d["targets"]["stream"]
    assert t["applies"] is False and t["fps"]["value"] == st["fps"] and t["fps"]["pass"] is None
    out = capsys.readouterr().out
    assert "FPS steady" in out and str(tmp_path / "r.json") in out


def test_text_auto_builtin_only_where_the_preset_fits():
    from streamedit_core.config import get_preset
    from streamedit_core.model.text import TextEnsemble

    enc, desc = bench.build_text(get_preset("tiny"), "auto")
    assert isinstance(enc, TextEnsemble) and desc.startswith("builtin MiniLM")
    enc, desc = bench.build_text(get_preset("2b"), "auto")
    emb = enc.encode(["make it a watercolor painting"])
    members = get_preset("2b").dit.text_members
    assert [tuple(s.shape[1:]) for s in emb.states] == [(m.max_tokens, m.dim) for m in members]
    with pytest.raises(ValueError, match="sentence"):
        bench.build_text(get_preset("2b"), "builtin")


def test_percentile_and_pan():
    assert bench.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert bench.percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    texture = bench.pattern_texture(40)
    frames = bench.pan(texture, 3, 5)
    assert frames.shape == (5, 40, 40, 3) and frames.dtype == torch.uint8
    assert frames.float().std() > 20  # a pattern, not a flat image
    assert torch.equal(frames[1, 1:, 1:], frames[0, :-1, :-1])  # 1 px diagonal drift per frame
    # periodic: one full period later the pan is back where it was, no seam in between
    assert torch.equal(bench.pan(texture, 43, 1)[0], frames[0])
    step = (frames[1:].float() - frames[:-1].float()).abs().mean()
    wrap = (bench.pan(texture, 39, 2).float().diff(dim=0)).abs().mean()
    assert wrap < 2 * step


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_cuda_graphs_on_cpu_is_a_clear_error(tmp_path, capsys):
    rc = cli_main(["bench", "stream", "--preset", "tiny", "--size", "64", "--cuda-graphs",
                   "--out", str(tmp_path)])
    assert rc == 2
    assert "--cuda-graphs needs CUDA; the device is cpu" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--densities", "25,150"], "--densities must be percentages in (0, 100], got '25,150'"),
    (["--densities", "a"], "--densities must be percentages like 12.5,25,50,100, got 'a'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--size", "60"], "frame size (height x width) 60 x 60 is not supported"),
    (["--frames", "0"], "--frames must be >= 1, got 0"),
    (["--history", "-1"], "--history must be >= 0, got -1"),
    (["--frames", "20", "--steps", "6"], "--frames 20 gives no output with 6 steps: the first "
                                         "edited frames come after 24 frames"),
    (["--name", "a/b"], "--name must be a plain file name, got 'a/b'"),
    (["--dtype", "bf16", "--device", "cuda:0"], "CUDA is not available"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, args, message):
    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("checks the no-CUDA error")
    mode = "stream" if {"--size", "--frames", "--history"} & set(args) else "attention"
    rc = cli_main(["bench", mode, "--preset", "tiny", *args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli_main(["bench", "attention", "--preset", "tiny", "--out", str(f)]) == 2
    assert f"--out {str(f)!r} is a file" in capsys.readouterr().err


def test_help_in_a_subprocess():
    r = subprocess.run([sys.executable, "-m", "streamedit_core", "bench", "--help"],
                       capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    for word in ("{attention,stream,all}", "--cuda-graphs", "--compile", "--backend", "--densities"):
        assert word in r.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paths_at_small_sizes(tmp_path):
    """Every CUDA path at a small size: CUDA events, compiled flex on the same mask (the demo
    preset: head dim 64, blocks of 64), compile + CUDA graphs + per-stage events (tiny)."""
    d = run_bench(tmp_path / "a", "attention", "--preset", "demo", "--size", "128", "--iters", "3")
    assert d["device"]["type"] == "cuda" and d["args"]["dtype"] == "bf16"
    from streamedit_core.model.dsa import cupy_or_none
    att = d["results"]["attention"]
    assert att["ours_impl"] == ("cuda-kernel" if cupy_or_none() else "torch-reference")
    for r in att["rows"]:
        assert r["flex"].get("ms", 0) > 0, r["flex"]
        assert r["flex_max_abs_diff_vs_ours"] < 0.05  # bf16 rounding
    d = run_bench(tmp_path / "s", "stream", "--preset", "tiny", "--size", "64", "--frames", "24",
                  "--steps", "2", "--warmup", "1", "--text", "random", "--compile", "--cuda-graphs",
                  "--breakdown")
    st = d["results"]["stream"]
    assert st["cuda_graphs"] and st["fps"] > 0 and st["chunk_ms_p50"] <= st["chunk_ms_p95"]
    assert st["peak_memory_kind"] == "torch.cuda.max_memory_allocated"
    assert st["peak_memory_gb"] >= st["weights_gb"]
    assert all(v > 0 for v in st["stage_ms_per_chunk"].values())
