"""Per-clip metrics of a video edit, from tensors only (no network, no pretrained model).

Every clip is `[T, H, W, 3]` float in `[0, 1]`. The names follow the columns of the
StreamEdit-DiT paper; each one is the offline analogue of a VBench dimension
(https://github.com/Vchitect/VBench), computed against the exact ground-truth edit that the
procedural benchmark gives us:

- Edit Fidelity: PSNR (dB, capped at `PSNR_CAP`) and SSIM of the output against the ground truth.
- Identity Preservation: how much of the source's structure the output keeps (local
  correlation of the gradient-magnitude maps of output and source, weighted by the source's
  structure). Counted only where the ground-truth edit itself keeps the source's structure
  (blur, pixelate or a sketch do not).
- Temporal Coherence: VBench's temporal-flickering score, 1 - mean |frame difference error|,
  where the error is our frame-to-frame change minus the ground truth's (so real motion is
  not flicker, and a constant per-frame error is not either).
- Flicker: a clip's mean absolute frame-to-frame change (`flicker`, VBench's flicker
  unnormalised). The flicker ratio is the output's flicker over the ground truth's, per clip
  (`flicker_ratio`) or pooled over a set of clips (`pooled_flicker`, the demo recipe's number
  for issue 7's target: within 1.2x). 1 when the output changes as much as the ground truth;
  above 1 it flickers, below 1 it freezes motion. Not a [0, 1] score, so not in Overall Quality.
- Motion Smoothness: VBench's score with linear interpolation in place of its AMT model:
  1 - mean |middle frame - average of its two neighbours| over every frame triple.
- Structure margin: where the ground-truth edit changes the source's structure (blur,
  pixelate, sketch, a coarse posterize), how much more the output's edges agree with the
  ground truth's than with the source's. Prompt Adherence (the edit-family classifier,
  `classifier.py`) counts a pair only where this margin is positive: the classifier reads
  statistics, and has credited textures that keep the source's outlines as the asked-for
  mosaic or sketch (docs/demo-model.md, Run 22). Overall Quality comes from `overall_quality`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PSNR_CAP = 100.0  # dB; identical clips would give +inf
SSIM_SIGMA = 1.5  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5
SSIM_RADIUS = 5
SSIM_C1 = 0.01 ** 2  # (K1 * L)^2 with L = 1 (data range)
SSIM_C2 = 0.03 ** 2
STRUCTURE_EPS = 1e-9  # tiny next to edge-map variances (~1e-4..1e-2): only guards 0 / 0
STRUCTURE_MIN = 0.9  # ground truth's own structure agreement above which an edit "keeps structure"
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights
# Added to both sides of the flicker ratio: two static clips give 1, not 0 / 0. Under 1/40 of
# an 8-bit level, so it moves the ratio by < 1% wherever the ground truth changes by >= 0.01.
FLICKER_EPS = 1e-4

# The columns of the summary, in table order: (key, header); higher is better for all but
# flicker_ratio, which is best at 1.
COLUMNS = (
    ("psnr", "Edit Fidelity PSNR (dB)"),
    ("ssim", "Edit Fidelity SSIM"),
    ("adherence", "Prompt Adherence"),
    ("identity", "Identity Preservation"),
    ("temporal_coherence", "Temporal Coherence"),
    ("flicker_ratio", "Flicker ratio (GT = 1)"),
    ("motion_smoothness", "Motion Smoothness"),
    ("overall", "Overall Quality"),
)
# Overall Quality: the plain mean of these [0, 1] scores (PSNR is left out: SSIM measures the
# same thing on a bounded scale). A score that does not apply to a clip (identity for a
# structure-changing edit) is left out of that clip's mean.
OVERALL_KEYS = ("ssim", "adherence", "identity", "temporal_coherence", "motion_smoothness")


def check_clip(x: Tensor, name: str) -> Tensor:
    """ValueError naming `name` unless x is a float clip [T, H, W, 3]; returns it as float32."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [T, H, W, 3], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a clip [T, H, W, 3] with T >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be float in [0, 1], got dtype {x.dtype}")
    return x.float()


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    a, b = check_clip(a, names[0]), check_clip(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has "
                         f"{tuple(b.shape)}; they must match")
    return a, b


def luma(x: Tensor) -> Tensor:
    """[..., 3] RGB -> [...] luma (BT.601)."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    return (x * w).sum(-1)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-r ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def _local_mean(x: Tensor) -> Tensor:
    """[N, H, W] -> Gaussian-weighted local means over 'valid' windows [N, H-10, W-10]."""
    g = _gaussian_window(x.dtype, x.device)
    x = x.unsqueeze(1)  # [N, 1, H, W]
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return x.squeeze(1)


def _local_moments(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """a, b [N, H, W] -> Gaussian-windowed (mean a, mean b, var a, var b, cov), each
    [N, H-10, W-10] float64."""
    if min(a.shape[-2:]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"frames of {a.shape[-2]} x {a.shape[-1]} are too small for SSIM's "
                         f"{2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1} window")
    a, b = a.double(), b.double()  # variances are small differences of large sums
    mu_a, mu_b = _local_mean(a), _local_mean(b)
    var_a = (_local_mean(a * a) - mu_a ** 2).clamp_min(0)
    var_b = (_local_mean(b * b) - mu_b ** 2).clamp_min(0)
    cov = _local_mean(a * b) - mu_a * mu_b
    return mu_a, mu_b, var_a, var_b, cov


# --- Edit Fidelity ------------------------------------------------------------------------
def psnr(output: Tensor, target: Tensor) -> float:
    """PSNR in dB over the whole clip (data range 1), capped at PSNR_CAP for identical clips."""
    output, target = _check_pair(output, target, ("output", "target"))
    mse = float(((output.double() - target.double()) ** 2).mean())
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return 10.0 * math.log10(1.0 / mse)


def ssim(output: Tensor, target: Tensor) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian 11x11 window, sigma 1.5, per RGB channel) over
    frames and channels; equals skimage's `structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, data_range=1)`."""
    output, target = _check_pair(output, target, ("output", "target"))
    a = output.permute(0, 3, 1, 2).flatten(0, 1)  # [T*3, H, W]
    b = target.permute(0, 3, 1, 2).flatten(0, 1)
    mu_a, mu_b, var_a, var_b, cov = _local_moments(a, b)
    ssim_map = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
                / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2)))
    return float(ssim_map.mean())


# --- Identity Preservation -----------------------------------------------------------------
def gradient_magnitude(x: Tensor) -> Tensor:
    """[T, H, W, 3] -> [T, H-1, W-1] magnitude of the luma gradient (forward differences).
    A magnitude, so an inverted image has the same edges as the original."""
    y = luma(x)  # [T, H, W]
    dx = y[:, :-1, 1:] - y[:, :-1, :-1]
    dy = y[:, 1:, :-1] - y[:, :-1, :-1]
    return (dx ** 2 + dy ** 2).sqrt()


def structure_agreement(output: Tensor, source: Tensor) -> float:
    """How much of the source's edge structure the output keeps, in [-1, 1]: the local
    correlation between the edge maps of the two clips (SSIM's structure term), averaged over
    windows weighted by how much structure the source has there.

    1 when the output has edges wherever the source has them, whatever their strength,
    brightness, colour or polarity; 0 for a featureless output. Unlike SSIM's structure term
    (cov + c) / (sd_a * sd_b + c), the constant is only in the denominator and flat source
    windows carry no weight, so a flat output cannot score 1 by matching "nothing"."""
    output, source = _check_pair(output, source, ("output", "source"))
    _, _, var_o, var_s, cov = _local_moments(gradient_magnitude(output), gradient_magnitude(source))
    sd_s = var_s.sqrt()
    corr = cov / (var_o.sqrt() * sd_s + STRUCTURE_EPS)
    return float((corr * sd_s).sum() / sd_s.sum().clamp_min(1e-12))


# --- Temporal Coherence and Motion Smoothness ---------------------------------------------
def temporal_coherence(output: Tensor, target: Tensor) -> float:
    """1 - mean |(out[t+1] - out[t]) - (gt[t+1] - gt[t])|, in [0, 1] (clamped); 1 for one frame.

    VBench's temporal flickering is (255 - mean |frame difference|) / 255 on static scenes;
    subtracting the ground truth's own frame differences lets it score moving footage."""
    output, target = _check_pair(output, target, ("output", "target"))
    if output.shape[0] < 2:
        return 1.0
    err = (output.diff(dim=0) - target.diff(dim=0)).abs().mean()
    return float((1.0 - err).clamp(0.0, 1.0))


def flicker(clip: Tensor) -> float:
    """Mean |x[t+1] - x[t]| of a clip [T, H, W, 3] (VBench's flicker, unnormalised); 0 for one frame."""
    clip = check_clip(clip, "clip")
    return float(clip.diff(dim=0).abs().mean()) if clip.shape[0] > 1 else 0.0


def flicker_ratio(output: Tensor, target: Tensor) -> float:
    """(flicker(output) + eps) / (flicker(target) + eps), eps = FLICKER_EPS; 1 for one frame and
    for the ground truth against itself, > 1 for an output that flickers."""
    output, target = _check_pair(output, target, ("output", "target"))
    if output.shape[0] < 2:
        return 1.0
    return (flicker(output) + FLICKER_EPS) / (flicker(target) + FLICKER_EPS)


def pooled_flicker(outputs: list[Tensor], targets: list[Tensor]) -> dict[str, float]:
    """The flicker of a set of clips against their ground truths: `flicker` and
    `flicker_ground_truth` (the mean `flicker` of each set) and `flicker_ratio`, their ratio: a
    ratio of means, so a clip whose ground truth barely moves cannot dominate it as it can a mean
    of per-clip `flicker_ratio`s."""
    if len(outputs) != len(targets) or not outputs:
        raise ValueError(f"need as many outputs as targets, at least one; got {len(outputs)} and {len(targets)}")
    ours = sum(flicker(o) for o in outputs) / len(outputs)
    theirs = sum(flicker(t) for t in targets) / len(targets)
    return {"flicker": ours, "flicker_ground_truth": theirs, "flicker_ratio": ours / max(theirs, 1e-12)}


def motion_smoothness(output: Tensor) -> float:
    """1 - mean |x[t] - (x[t-1] + x[t+1]) / 2| over t = 1..T-2, in [0, 1]; 1 for < 3 frames.

    VBench reconstructs dropped frames with a frame-interpolation network (AMT) and scores
    (255 - MAE) / 255; the linear interpolation of the neighbours is its offline analogue."""
    output = check_clip(output, "output")
    if output.shape[0] < 3:
        return 1.0
    middle = 0.5 * (output[:-2] + output[2:])
    return float((1.0 - (output[1:-1] - middle).abs().mean()).clamp(0.0, 1.0))


# --- one clip, and the summary ------------------------------------------------------------
def clip_metrics(output: Tensor, target: Tensor, source: Tensor) -> dict[str, float | None]:
    """Every tensor-only metric of one edited clip. Where the ground-truth edit keeps the
    source's structure (its own agreement >= STRUCTURE_MIN) `identity` is the output's
    agreement with the source and `structure_margin` is None; where it does not, `identity`
    is None and `structure_margin` is the output's agreement with the ground truth minus its
    agreement with the source (> 0: the output took the edit's structure)."""
    output, target = _check_pair(output, target, ("output", "ground truth"))
    _check_pair(output, source, ("output", "source"))
    keeps_structure = structure_agreement(target, source) >= STRUCTURE_MIN
    with_source = structure_agreement(output, source)
    return {
        "psnr": psnr(output, target),
        "ssim": ssim(output, target),
        "identity": with_source if keeps_structure else None,
        "structure_margin": None if keeps_structure else structure_agreement(output, target) - with_source,
        "temporal_coherence": temporal_coherence(output, target),
        "flicker_ratio": flicker_ratio(output, target),
        "motion_smoothness": motion_smoothness(output),
    }


def overall_quality(scores: dict[str, float | None]) -> float:
    """Mean of the OVERALL_KEYS scores that are present (not None) in `scores`."""
    vals = [float(scores[k]) for k in OVERALL_KEYS if scores.get(k) is not None]
    if not vals:
        raise ValueError(f"no scores to combine: need some of {OVERALL_KEYS}, got {sorted(scores)}")
    return sum(vals) / len(vals)


def summarize(rows: list[dict]) -> dict[str, float | int | None]:
    """Mean of every COLUMNS key over the rows that have it (not None), plus `n_<key>` counts
    and `classified`, the classifier's adherence before the structure check."""
    out: dict[str, float | int | None] = {}
    for key, _ in COLUMNS:
        out[key], out[f"n_{key}"] = _mean(rows, key)
    # The classifier's votes before the structure check, to show what the check took away.
    out["classified"], _ = _mean(rows, "classified")
    return out


def _mean(rows: list[dict], key: str) -> tuple[float | None, int]:
    """(mean of `key` over the rows that have it, not None, or None if none do; their count)."""
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return (sum(vals) / len(vals) if vals else None), len(vals)
