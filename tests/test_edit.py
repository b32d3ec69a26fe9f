"""Whole-file editing (stream/edit.py) at the limits (issue 49): progress that counts the flush, a
working size, size limits that name themselves, a slow size's warning, a truncated file's warning,
an allocator failure as one clear error; and Load Video Chunk's decoders (inode, size, /free)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from model_helpers import FakeTextEncoder as FakeText
from streamedit_core.config import MAX_CHUNK_PIXELS, MAX_FRAME_PIXELS, PRESETS
from streamedit_core.io.video import ChunkReader, VideoReader, VideoWriter, check_chunk_size
from streamedit_core.stream import edit
from streamedit_core.stream.edit import (edit_steps, edit_video, parse_size, slow_size_warning,
                                         working_size)
from streamedit_core.stream.editor import check_frame_size


def write_faststart(path: Path, frames: int, size: int = 32, seed: int = 0) -> Path:
    """An mp4 with its index (moov) first, as streaming sites serve them: cut short, it still
    opens and promises all its frames."""
    rng = np.random.default_rng(seed)
    base = rng.random((size // 8 + 2, size // 8 + 2, 3))
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.kron(base, np.ones((8, 8, 1)))[i % 8:i % 8 + size, i % 8:i % 8 + size]
            for packet in s.encode(av.VideoFrame.from_ndarray((img * 255).astype(np.uint8), format="rgb24")):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


# --- progress: every forward, the flush included (defect 8) ----------------------------------
@pytest.mark.parametrize("frames,steps,chunk", [(10, 2, 4), (8, 6, 16), (23, 3, 7)])
def test_progress_counts_every_forward_the_flush_included(live_tiny_model, make_clip, tmp_path, frames, steps,
                                                          chunk):
    """Before, the bar stopped at the frame count and the flush (steps - 1 forwards, minutes on
    large frames) ran after it had reached 100 %."""
    src = make_clip("in.mp4", frames=frames, w=32, h=32)
    calls = []
    forwards = []
    dit_forward = live_tiny_model.dit.forward
    live_tiny_model.dit.forward = lambda *a, **kw: forwards.append(1) or dit_forward(*a, **kw)
    try:
        edit_video(live_tiny_model, FakeText(), src, tmp_path / "out.mp4", "x", steps=steps,
                   progress=lambda d, t: calls.append((d, t, len(forwards))), chunk_frames=chunk)
    finally:
        live_tiny_model.dit.forward = dit_forward
    total = edit_steps(frames, steps)
    assert len(forwards) == total == len(calls)
    assert [c[0] for c in calls] == list(range(1, total + 1))  # one tick per forward, after it
    assert all(c[1] == total for c in calls) and all(c[0] == c[2] for c in calls)


# --- working size, limits (defects 6, 8) -----------------------------------------------------
def test_parse_and_working_size():
    assert parse_size(None) is None and parse_size("") is None and parse_size(0) is None
    assert parse_size("640") == 640 and parse_size(" 640 x 360 ") == (640, 360) and parse_size(512) == 512
    for bad in ("0x360", "big", "640x", "-3"):
        with pytest.raises(ValueError, match="is not a working size"):
            parse_size(bad)
    assert working_size(1280, 720, None) == (1280, 720)
    assert working_size(1280, 720, 640) == (640, 360)
    assert working_size(720, 1280, 100) == (56, 104)  # portrait, rounded to multiples of 8
    assert working_size(1280, 720, (320, 200)) == (320, 200)


def test_frame_and_chunk_sizes_past_their_limits_name_them(tiny_model):
    check_frame_size(tiny_model.config, 1080, 1920)
    with pytest.raises(ValueError, match=r"4000 x 4000 \(16.0 megapixels\) is past the limit of 2.07 "
                                         r"megapixels \(MAX_FRAME_PIXELS: 1920 x 1080\).*--size"):
        check_frame_size(tiny_model.config, 4000, 4000)
    check_chunk_size(64, 1080, 1920)
    with pytest.raises(ValueError, match=r"clip.mp4: a chunk of 65 frames of 1920 x 1080 .*past the limit of "
                                         r"133 megapixels \(MAX_CHUNK_PIXELS: 64 frames of 1920 x 1080\); use "
                                         r"at most 64 frames"):
        check_chunk_size(65, 1080, 1920, "clip.mp4")
    assert MAX_CHUNK_PIXELS == 64 * MAX_FRAME_PIXELS == 64 * 1920 * 1080


def test_a_large_video_edits_at_a_working_size_and_comes_back_at_its_own(live_tiny_model, make_clip, tmp_path):
    src = make_clip("in.mp4", frames=6, w=64, h=32)
    summary = edit_video(live_tiny_model, FakeText(), src, tmp_path / "out.mp4", "x", steps=2, size=32)
    assert summary["working_size"] == (32, 16) and (summary["width"], summary["height"]) == (64, 32)
    out = VideoReader(tmp_path / "out.mp4")
    assert (out.width, out.height, out.num_frames) == (64, 32, 6)
    full = edit_video(live_tiny_model, FakeText(), src, tmp_path / "full.mp4", "x", steps=2)
    assert full["working_size"] == (64, 32)


def test_a_slow_size_is_warned_about_with_an_estimate(live_tiny_model, make_clip, tmp_path, monkeypatch):
    demo = PRESETS["demo"]
    text = slow_size_warning(demo, 1280, 720, 48, "cpu")
    assert text.startswith("editing 48 frames at 1280 x 720 will take about ") and "s a frame" in text
    assert "a working size of" in text and "--size" in text
    assert slow_size_warning(demo, 64, 64, 48, "cpu") is None  # quick
    assert slow_size_warning(demo, 1280, 720, 48, "cuda") is None  # no measurement to go by
    monkeypatch.setattr(edit, "SLOW_EDIT_SECONDS", 0.0)
    seen = []
    summary = edit_video(live_tiny_model, FakeText(), make_clip("in.mp4", frames=4), tmp_path / "out.mp4", "x",
                         steps=2, on_warning=seen.append)
    assert seen == summary["warnings"] and "will take about" in seen[0]


def test_running_out_of_memory_is_one_clear_error(tiny_model, make_clip, tmp_path, monkeypatch):
    """An allocator failure mid-edit (a frame size this machine cannot hold) becomes a ValueError
    that names the size and the way out, and leaves no file."""
    from streamedit_core.stream.editor import StreamEditor

    def allocate_too_much(self, frames):
        torch.empty(2 ** 62, dtype=torch.uint8)  # the real CPU allocator's failure

    monkeypatch.setattr(StreamEditor, "feed", allocate_too_much)
    with pytest.raises(ValueError, match=r"out of memory editing 32 x 32 frames on cpu .*smaller working size"):
        edit_video(tiny_model, FakeText(), make_clip("in.mp4", frames=4), tmp_path / "out.mp4", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


# --- a truncated file (defect 7) --------------------------------------------------------------
def test_a_truncated_video_is_edited_with_a_warning_naming_both_counts(live_tiny_model, tmp_path):
    whole = write_faststart(tmp_path / "whole.mp4", 20)
    with av.open(str(whole)) as c:  # cut between two packets: the file ends early, cleanly
        at = [p.pos for p in c.demux(c.streams.video[0]) if p.pos is not None][12]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:at])
    reader = VideoReader(cut)
    decoded = sum(len(c) for c in reader)
    assert reader.header_frames == reader.num_frames == 20 and 0 < decoded < 20
    seen = []
    summary = edit_video(live_tiny_model, FakeText(), cut, tmp_path / "out.mp4", "x", steps=2, on_warning=seen.append)
    assert summary["frames"] == decoded and summary["header_frames"] == 20
    assert seen == [f"{cut}: its header promises 20 frames, but {decoded} could be decoded (a truncated or "
                    f"damaged file?); the output has {decoded} frames"]
    assert edit_video(live_tiny_model, FakeText(), tmp_path / "whole.mp4", tmp_path / "o2.mp4", "x",
                      steps=2)["warnings"] == []


# --- small things (defect 9) -----------------------------------------------------------------
def test_fps_that_rounds_to_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"fps 1e-06 rounds to 0"):
        VideoWriter(tmp_path / "out.mp4", 1e-6, 16, 16)
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_cfg_scale_fails_before_any_work(tiny_model):
    from streamedit_core.stream.editor import StreamEditor

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
            StreamEditor(tiny_model, FakeText(), "x", cfg_scale=bad)


def test_chunk_reader_sees_a_replaced_file_with_the_same_mtime(make_clip, tmp_path):
    """The open decoder is reused only for the same file: another file put in its place (same
    name, same mtime, another inode or size) is decoded from its start."""
    path = make_clip("clip.mp4", frames=16, w=32, h=32)
    reader = ChunkReader()
    first, _ = reader.read(path, 0, 4)
    mtime = os.stat(path).st_mtime_ns
    other = make_clip("other.mp4", frames=24, w=32, h=32)
    with VideoWriter(tmp_path / "bright.mp4", 8, 32, 32) as w:
        w.write(torch.ones(16, 32, 32, 3))
    os.replace(tmp_path / "bright.mp4", path)
    os.utime(path, ns=(mtime, mtime))
    chunk, _ = reader.read(path, 1, 4)
    assert chunk.mean() > 0.95, "read the new file, not the old decoder's next chunk"
    reader.close()
    del other


def test_chunk_reader_clear_from_another_thread_closes_decoders_on_the_reading_thread(make_clip):
    path = make_clip("clip.mp4", frames=16, w=32, h=32)
    reader = ChunkReader()
    reader.read(path, 0, 4)
    cursor = next(iter(reader._open.values()))
    server = threading.Thread(target=reader.clear)  # POST /free, on ComfyUI's server thread
    server.start()
    server.join()
    assert len(reader) == 0 and not cursor.closed  # not under a read that may be running
    reader.release_cleared()  # the worker, after its job
    assert cursor.closed
    chunk, _ = reader.read(path, 1, 4)  # decoded from the start again
    assert chunk.shape == (4, 32, 32, 3)
