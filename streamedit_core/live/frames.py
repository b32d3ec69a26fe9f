"""Camera frames of any size to the session's square frames, and back to frames a track sends.

`fit_frame` centre-crops to a square and resizes (antialiased) to the session's size: a webcam's
640 x 480 and a phone's 1080 x 1920 both become, say, 128 x 128, the middle of the picture.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def to_rgb(frame: Any) -> np.ndarray:
    """An av.VideoFrame (any pixel format) or an [H, W, 3] uint8 array -> [H, W, 3] uint8 RGB."""
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 frame, got {frame.dtype} {frame.shape}")
        return frame
    to_ndarray = getattr(frame, "to_ndarray", None)
    if to_ndarray is None:
        raise TypeError(f"expected an av.VideoFrame or a numpy array, got {type(frame).__name__}")
    return to_ndarray(format="rgb24")


def crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square of a height x width frame."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def fit_frames(images: list[np.ndarray], size: int) -> Tensor:
    """[H, W, 3] uint8 frames (sizes may differ) -> [T, size, size, 3] float32 in [0, 1]: each
    centre-cropped to a square, resized with antialiasing."""
    out = []
    for img in images:
        top, left, side = crop_box(img.shape[0], img.shape[1])
        x = torch.from_numpy(np.ascontiguousarray(img[top:top + side, left:left + side]))
        x = x.permute(2, 0, 1)[None].float().div_(255.0)  # [1, 3, side, side]
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x[0].permute(1, 2, 0))  # [size, size, 3]
    return torch.stack(out).clamp_(0.0, 1.0)


def to_uint8(frames: Tensor) -> np.ndarray:
    """[T, H, W, 3] float in [0, 1] -> [T, H, W, 3] uint8 (contiguous, for av.VideoFrame)."""
    return np.ascontiguousarray(frames.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).numpy())
