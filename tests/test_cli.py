"""`python -m streamedit_core edit`: a real edit through a subprocess, and every bad input:
exit status 2, one `error:` line naming the problem, no traceback, no output file."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamedit_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "streamedit_core", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_edit_a_generated_mp4(make_clip, tmp_path):
    from streamedit_core.io.video import VideoReader
    src = make_clip("in.mp4", frames=10, w=64, h=32, fps=12)
    out = tmp_path / "out.mp4"
    r = _cli("edit", src, "-p", "make it a watercolor painting", "-o", out, "--preset", "tiny",
             "--seed", "1", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert "edited 10 frames (64x32" in r.stdout and "frames/s" in r.stdout
    video = VideoReader(out)
    assert (video.num_frames, video.width, video.height, video.fps) == (10, 64, 32, 12)


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    r = _cli("edit", tmp_path / "missing.mp4", "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: input video not found: '{tmp_path / 'missing.mp4'}'"]
    assert "Traceback" not in r.stderr and not (tmp_path / "o.mp4").exists()


def _bad(capsys, tmp_path, *args):
    before = set(tmp_path.iterdir())
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file left
    return err[0]


def test_missing_input(capsys, tmp_path):
    msg = _bad(capsys, tmp_path, "edit", tmp_path / "nope.mp4", "-p", "x", "-o", tmp_path / "o.mp4",
               "--preset", "tiny")
    assert "input video not found" in msg and "nope.mp4" in msg


def test_not_a_video(capsys, tmp_path):
    txt = tmp_path / "notes.mp4"
    txt.write_text("this is not a video")
    msg = _bad(capsys, tmp_path, "edit", txt, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny")
    assert "notes.mp4" in msg and "not a readable video" in msg


def test_output_dir_missing(capsys, tmp_path, make_clip):
    src = make_clip("in.mp4")
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "no" / "o.mp4", "--preset", "tiny")
    assert "output directory does not exist" in msg and str(tmp_path / "no") in msg


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(capsys, tmp_path, make_clip, prompt):
    src = make_clip("in.mp4")
    msg = _bad(capsys, tmp_path, "edit", src, "-p", prompt, "-o", tmp_path / "o.mp4", "--preset", "tiny")
    assert "prompt is empty" in msg


def test_unknown_preset(capsys, tmp_path, make_clip):
    src = make_clip("in.mp4")
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "huge")
    assert "unknown preset 'huge'" in msg and "tiny" in msg


def test_no_model_given_and_no_shipped_model(capsys, tmp_path, make_clip, monkeypatch):
    """Without --checkpoint or --preset the shipped demo model is used (test_vocabulary.py); in a
    checkout without it, one error names the flags and the missing file."""
    import streamedit_core.io.checkpoint as checkpoint
    monkeypatch.setattr(checkpoint, "SHIPPED_MODEL", tmp_path / "gone" / "streamedit_demo.safetensors")
    src = make_clip("in.mp4")
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4")
    assert "--checkpoint" in msg and "--preset" in msg and "gone/streamedit_demo.safetensors' is missing" in msg


def test_frame_size_not_supported(capsys, tmp_path, make_clip):
    src = make_clip("in.mp4", w=44, h=32)
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny")
    assert "32 x 44 is not supported" in msg and "32 x 40, 32 x 48" in msg


def test_missing_checkpoint(capsys, tmp_path, make_clip):
    src = make_clip("in.mp4")
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4",
               "--checkpoint", tmp_path / "model.safetensors")
    assert "model.safetensors" in msg


def test_unknown_command(capsys, tmp_path):
    assert "unknown command 'paint'" in _bad(capsys, tmp_path, "paint")


def test_forwarded_command_missing_from_build(capsys, tmp_path, monkeypatch):
    import streamedit_core.cli as cli
    monkeypatch.setitem(cli._FORWARDED, "bench", ("streamedit_core.no_such_module", "main"))
    assert "'bench' is not available in this build" in _bad(capsys, tmp_path, "bench")
