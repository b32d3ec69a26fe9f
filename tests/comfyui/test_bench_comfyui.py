"""`python -m streamedit_core bench comfyui` (bench/comfyui_bench.py): the chunk-streaming workflow
job after job in a real ComfyUI, against the core StreamEditor on the same chunks (small: the tiny
preset at 32 px)."""
from __future__ import annotations

import json

import pytest

from streamedit_core.bench.comfyui_bench import main
from streamedit_core.cli import main as cli_main

pytestmark = pytest.mark.comfyui


def test_jobs_and_core_measured_on_the_same_chunks(tmp_path, capsys):
    rc = main(["--model", "tiny", "--size", "32", "--chunk-frames", "8", "--chunks", "3",
               "--warmup", "1", "--steps", "2", "--threads", "2", "--name", "t",
               "--out", str(tmp_path / "out"), "--base", str(tmp_path / "base")])
    assert rc == 0
    d = json.loads((tmp_path / "out" / "t.json").read_text())
    assert d["device"]["type"] == "cpu" and d["args"]["model"] == "bench_tiny_random.safetensors"
    comfy, core = d["results"]["comfyui"], d["results"]["core"]
    # 2 steps: the first 8-frame chunk fills the buffer and releases 4 frames, later ones 8
    # the core runs before and after the server: its timed chunks twice, warm-up once
    assert comfy["frames_out"] == [4, 8, 8, 8] and core["frames_out"] == [4, 8, 8, 8, 8, 8, 8]
    assert len(comfy["job_s"]) == 4 and len(core["chunk_s"]) == 7
    assert comfy["frames_timed"] == 24 and core["frames_timed"] == 48
    assert core["median_s_before"] > 0 and core["median_s_after"] > 0
    assert comfy["fps"] > 0 and core["fps"] > 0 and comfy["server_start_s"] > 0
    assert d["results"]["overhead_per_job_s"] == pytest.approx(comfy["median_s"] - core["median_s"])
    assert "overhead per job" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--size", "30"], "--size must be a positive multiple of 8, got 30"),
    (["--chunk-frames", "6"], "--chunk-frames must be a positive multiple of 4, got 6"),
    (["--model", "nope"], "--model 'nope': no such checkpoint"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, args, message):
    assert main([*args, "--base", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_the_cli_forwards_bench_comfyui_and_demo(tmp_path, capsys):
    assert cli_main(["bench", "comfyui", "--size", "30", "--base", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--size must be a positive multiple of 8, got 30" in capsys.readouterr().err
    for argv in (["bench", "comfyui", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 0
        assert f"python -m streamedit_core {' '.join(argv[:-1])}" in capsys.readouterr().out
