"""`python -m streamedit_core edit`: a real edit through a subprocess, and every bad input:
exit status 2, one `error:` line naming the problem, no traceback, no output file."""
import os
import signal
import subprocess
import sys
import time
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_edit_leaves_no_temporary_file(tmp_path, make_clip, sig):
    """Issue 49, defect 4: SIGTERM or SIGHUP while the edit writes its output left the hidden
    .out.XXXX.mp4 behind; the CLI now ends as it does on Ctrl-C: one error line, no file."""
    src = make_clip("in.mp4", frames=96, w=64, h=64)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "streamedit_core", "edit", str(src), "-p", "x", "-o",
                             str(tmp_path / "out.mp4"), "--preset", "tiny", "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*.mp4")):  # the writer's temporary file: the edit runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"error: terminated by {signal.Signals(sig).name} (no output written)"
    assert [p.name for p in tmp_path.iterdir()] == ["in.mp4"]


# --- every bad input one clear error (issue 49, defect 5), and the limits (defects 6, 8, 9) ----
def _rewrite_checkpoint(src: Path, dst: Path, change) -> Path:
    """A copy of a checkpoint whose safetensors header `change(header)` edited."""
    import json
    import struct

    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


def _set_config(header, section, key, value):
    import json

    config = json.loads(header["__metadata__"]["streamedit_config"])
    config[section][key] = value
    header["__metadata__"]["streamedit_config"] = json.dumps(config)


def _set_dtype(header, dtype):
    name = next(k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32")
    header[name]["dtype"] = dtype


BAD_CHECKPOINTS = [
    (lambda h: h.__setitem__("__metadata__", ["not", "an", "object"]), "metadata must be an object of strings"),
    (lambda h: h["__metadata__"].__setitem__("streamedit_format", 2), "metadata 'streamedit_format' is 2 (int)"),
    (lambda h: _set_dtype(h, "F16"), "needs"),  # offsets that do not match the dtype
    (lambda h: _set_config(h, "dit", "num_heads", 0), "DiTConfig.num_heads=0 must be >= 1"),
    (lambda h: _set_config(h, "dit", "hidden_size", "80"), "config.dit.hidden_size must be an integer, got '80'"),
    (lambda h: _set_config(h, "sampler", "steps", 6.5), "config.sampler.steps must be an integer, got 6.5"),
]


@pytest.mark.parametrize("change,needle", BAD_CHECKPOINTS)
def test_a_damaged_checkpoint_is_one_error_line(capsys, tmp_path, make_clip, change, needle):
    from streamedit_core.io.checkpoint import save_checkpoint
    from streamedit_core.model import StreamEditModel

    src = make_clip("in.mp4")
    good = tmp_path / "good.safetensors"
    save_checkpoint(StreamEditModel.from_preset("tiny"), good)
    bad = _rewrite_checkpoint(good, tmp_path / "bad.safetensors", change)
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--checkpoint", bad)
    assert "bad.safetensors" in msg and needle in msg, msg


def test_text_encoder_folders_that_cannot_be_read_are_one_error_line(capsys, tmp_path, make_clip):
    import json
    import shutil

    from streamedit_core.model.text import minilm_folder

    src = make_clip("in.mp4")
    folder = tmp_path / "pickled" / "enc"
    shutil.copytree(minilm_folder(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04this is not a pickle of tensors")
    (folder.parent / "ensemble.json").write_text(json.dumps(
        {"name": "p", "members": [{"kind": "sentence", "path": "enc", "max_tokens": 16}]}))
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny",
               "--text-ensemble", folder.parent)
    assert "pytorch_model.bin" in msg and "safe_serialization=True" in msg
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "ensemble.json").write_bytes(b'{"name": "caf\xe9", "members": []}')
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny",
               "--text-ensemble", latin)
    assert str(latin / "ensemble.json") in msg and "not UTF-8" in msg


def test_a_prompt_that_is_not_utf8_is_one_error_line(capsys, tmp_path, make_clip):
    src = make_clip("in.mp4")
    prompt = os.fsdecode(b"make it caf\xe9")  # what Python makes of such bytes in argv
    msg = _bad(capsys, tmp_path, "edit", src, "-p", prompt, "-o", tmp_path / "o.mp4", "--preset", "tiny")
    assert "is not valid UTF-8 text" in msg


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_devices_this_machine_lacks_are_one_error_line(capsys, tmp_path, make_clip):
    src = make_clip("in.mp4")
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny",
               "--device", "cuda")
    assert "CUDA is not available here" in msg and "--device cpu" in msg
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny",
               "--device", "gpu0")
    assert "unknown device 'gpu0'" in msg


def test_out_of_memory_is_one_error_line(capsys, tmp_path, make_clip, monkeypatch):
    from streamedit_core.stream.editor import StreamEditor

    monkeypatch.setattr(StreamEditor, "feed", lambda self, frames: __import__("torch").empty(2 ** 62, dtype=__import__("torch").uint8))
    msg = _bad(capsys, tmp_path, "edit", make_clip("in.mp4"), "-p", "x", "-o", tmp_path / "o.mp4",
               "--preset", "tiny", "--quiet")
    assert "out of memory editing 32 x 32 frames on cpu" in msg and "--size" in msg


def test_a_non_finite_cfg_scale_fails_before_editing(capsys, tmp_path, make_clip):
    """Before, the whole clip was edited (a progress bar ran) and then the NaN frames failed."""
    msg = _bad(capsys, tmp_path, "edit", make_clip("in.mp4"), "-p", "x", "-o", tmp_path / "o.mp4",
               "--preset", "tiny", "--cfg-scale", "nan")
    assert "cfg_scale must be a finite number, got nan" in msg


def test_a_frame_past_the_size_limit_is_refused_and_edits_at_a_working_size(capsys, tmp_path, make_clip):
    from streamedit_core.io.video import VideoReader

    src = make_clip("big.mp4", frames=1, w=4000, h=4000)
    msg = _bad(capsys, tmp_path, "edit", src, "-p", "x", "-o", tmp_path / "o.mp4", "--preset", "tiny")
    assert "4000 x 4000 (16.0 megapixels) is past the limit" in msg and "MAX_FRAME_PIXELS" in msg
    assert main(["edit", str(src), "-p", "x", "-o", str(tmp_path / "o.mp4"), "--preset", "tiny",
                 "--steps", "1", "--size", "64", "--quiet"]) == 0
    assert "edited 1 frames (4000x4000, edited at 64x64" in capsys.readouterr().out
    out = VideoReader(tmp_path / "o.mp4")
    assert (out.width, out.height, out.num_frames) == (4000, 4000, 1)
