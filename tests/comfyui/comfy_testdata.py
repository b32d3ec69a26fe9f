"""Test data for the ComfyUI tests: file names, the tiny model, the clips, thread settings.

(A module of its own: `from conftest import ...` would be ambiguous between tests/conftest.py
and tests/comfyui/conftest.py.)
"""
from __future__ import annotations

import contextlib

import torch

from model_helpers import make_live_tiny_model

CHECKPOINT = "tiny_test.safetensors"
CLIP = "clip32.mp4"
CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 24, 32, 8
LONG_CLIP = "long32.mp4"  # 144 frames: chunks long enough to interrupt mid-job
ODD_CLIP = "odd36.mp4"  # 36 x 36: not a multiple of the STLE's 8-pixel stride
# CPU float results depend on the number of threads (how sums are split), so the server and the
# in-test reference computations both use one thread to be comparable.
THREADS = 1


def make_test_model():
    """The tiny preset whose DiT output depends on its inputs (see tests/model_helpers.py)."""
    return make_live_tiny_model()


def clip_frames(frames: int = CLIP_FRAMES, size: int = CLIP_SIZE) -> torch.Tensor:
    """[T, H, W, 3] smooth moving colour gradients in [0, 1] (compress well, change over time)."""
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    y = torch.linspace(0, 1, size)[None, :, None]
    x = torch.linspace(0, 1, size)[None, None, :]
    shape = (frames, size, size)
    r = (0.5 + 0.4 * torch.sin(6 * x + 0.3 * t)).expand(shape)
    g = (0.5 + 0.4 * torch.cos(5 * y - 0.2 * t)).expand(shape)
    b = (0.5 + 0.4 * torch.sin(4 * (x + y) + 0.1 * t)).expand(shape)
    return torch.stack([r, g, b], dim=-1)  # [T, H, W, 3]


@contextlib.contextmanager
def torch_threads(n: int = THREADS):
    """Run a reference computation with the server's thread count (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
