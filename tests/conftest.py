"""Shared fixtures: small, generic, CPU. Add new ones at the end with a one-line docstring."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_helpers import FakeTextEncoder, make_live_tiny_model


@pytest.fixture
def tiny_model():
    """The `tiny` preset, random weights (seed 0), CPU float32, eval mode."""
    from streamedit_core.model import StreamEditModel
    return StreamEditModel.from_preset("tiny", seed=0)


@pytest.fixture
def live_tiny_model():
    """The `tiny` preset whose DiT output depends on its inputs (see model_helpers)."""
    return make_live_tiny_model()


@pytest.fixture
def fake_text():
    """A FakeTextEncoder matching the `tiny` preset's text member (16 tokens x 384)."""
    return FakeTextEncoder()


@pytest.fixture(scope="session")
def minilm16():
    """The real all-MiniLM-L6-v2 ensemble with 16 tokens (the `tiny` preset's text member)."""
    from streamedit_core.model.text import TextEnsemble
    return TextEnsemble.minilm(max_tokens=16)


def write_clip(path: Path, frames: int, width: int, height: int, fps: int = 8, seed: int = 0) -> Path:
    """A small mp4 of moving coloured noise blocks (smooth enough for the codec), via our writer."""
    from streamedit_core.io.video import VideoWriter
    rng = np.random.default_rng(seed)
    base = rng.random((height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    with VideoWriter(path, fps, width, height) as writer:
        for i in range(frames):
            img = np.kron(base, np.ones((8, 8, 1), np.float32))
            shift = i % 8
            writer.write(img[shift:shift + height, shift:shift + width])
    return Path(path)


@pytest.fixture
def make_clip(tmp_path):
    """make_clip(name_or_path, frames, w, h, fps) -> Path of a small mp4 in tmp_path."""
    def make(path, frames: int = 8, w: int = 32, h: int = 32, fps: int = 8) -> Path:
        path = Path(path)
        if not path.is_absolute():
            path = tmp_path / path
        return write_clip(path, frames, w, h, fps)
    return make


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: OpenMP spinning on a shared 2-core machine slows small convolutions."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def live_camera(tmp_path_factory) -> Path:
    """A fake camera for Chromium: 300 frames (256 x 192, 30 fps) of a bundled clip, coded for 64 x 64 sessions."""
    from streamedit_core.bench.browser import FrameCode, make_fake_camera
    return make_fake_camera(tmp_path_factory.mktemp("camera") / "camera.y4m", frames=300, fps=30,
                            code=FrameCode(block=8 / 64))
