"""Training objectives: the SCM loss of the DiT and the STLE's reconstruction losses.

Flow convention (docs/internals.md): x_t = (1 - t) x0 + t eps, target velocity v = eps - x0,
predicted clean latent x0_hat = x_t - t v_hat.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# --- SCM: flow matching + temporal consistency ------------------------------------------------
def flow_loss(v_pred: Tensor, v_target: Tensor, weight: Tensor,
              channel_weight: Tensor | None = None) -> Tensor:
    """Mean squared velocity error over the frames with weight 1 (the in-flight frames).

    v_pred, v_target [B, C, T, h, w]; weight [B, T] >= 0, a weighted mean over frames (history
    frames get 0: their velocity is never used by the sampler); channel_weight [C] (mean 1) or
    None: see `pixel_channel_weights`.
    """
    err = squared_error(v_pred, v_target, channel_weight).mean(dim=(1, 3, 4))  # [B, T]
    return (err * weight).sum() / weight.sum().clamp(min=1)


def squared_error(a: Tensor, b: Tensor, channel_weight: Tensor | None = None) -> Tensor:
    """(a - b)^2 in fp32, [B, C, ...], each channel times channel_weight [C] when given."""
    sq = (a.float() - b.float()).pow(2)
    if channel_weight is None:
        return sq
    return sq * channel_weight.view(1, -1, *([1] * (sq.dim() - 2)))


def pixel_channel_weights(latent_std: Tensor, power: float) -> Tensor:
    """Per-channel loss weights [C], mean 1: latent_std^(2 * power). A normalised latent's error
    e_c shows in the decoded video (through the STLE's orthonormal linear path) as
    latent_std[c] * e_c, so power 1 makes the latent loss the pixel error; 0 gives all ones."""
    w = latent_std.float().pow(2 * power)
    return w / w.mean()


EDIT_WEIGHT_FLOOR = 0.1  # of the mean edit energy: a no-edit pair weighs as an edit of 0.1x the mean


def edit_energy(source: Tensor, target: Tensor, channel_weight: Tensor | None = None) -> Tensor:
    """Mean squared edit per sample: source, target [B, C, ...] -> [B] (fp32)."""
    return squared_error(target, source, channel_weight).flatten(1).mean(1)


def edit_weights(energy: Tensor, mean_energy: float, power: float) -> Tensor:
    """Per-sample loss weights [B] from edit energies [B]: ((e + floor) / mean)^-power, with
    floor EDIT_WEIGHT_FLOOR * mean (TrainConfig.edit_weighting). Relative: `flow_loss` divides
    by the sum of the weights, so only the ratios between samples count."""
    if mean_energy <= 0:
        raise ValueError(f"mean edit energy must be > 0, got {mean_energy}: the data has no edits")
    return ((energy.float() + EDIT_WEIGHT_FLOOR * mean_energy) / mean_energy).pow(-power)


def global_shift(a: Tensor, b: Tensor) -> Tensor:
    """Integer (dy, dx) per batch row that best maps frame a onto frame b, by phase correlation.

    a, b [B, C, h, w] -> [B, 2] long. Used to motion-compensate consecutive latent frames
    (a global camera motion estimate; the sources' motion, not the prediction's).
    """
    fa, fb = torch.fft.rfft2(a.float()), torch.fft.rfft2(b.float())
    cross = (fb * fa.conj()).sum(1)  # [B, h, w//2+1], summed over channels
    corr = torch.fft.irfft2(cross / (cross.abs() + 1e-8), s=a.shape[-2:])  # [B, h, w]
    h, w = a.shape[-2:]
    idx = corr.flatten(1).argmax(1)
    dy, dx = idx // w, idx % w
    dy = torch.where(dy > h // 2, dy - h, dy)
    dx = torch.where(dx > w // 2, dx - w, dx)
    return torch.stack([dy, dx], 1)


def _roll_rows(x: Tensor, shifts: Tensor) -> Tensor:
    """Roll each row of x [B, C, h, w] by its own (dy, dx) from shifts [B, 2]."""
    return torch.stack([torch.roll(x[i], (int(shifts[i, 0]), int(shifts[i, 1])), dims=(-2, -1))
                        for i in range(x.shape[0])])


def temporal_consistency_loss(x0_pred: Tensor, x0: Tensor, weight: Tensor,
                              cond: Tensor | None = None,
                              channel_weight: Tensor | None = None) -> Tensor:
    """Error in the frame-to-frame change of the predicted clean latents.

    x0_pred, x0 [B, C, T, h, w]: predicted and true clean latents of the window (history frames
    carry x0 itself, so the first in-flight frame is tied to the clean history). weight [B, T]:
    1 for in-flight frames. For each consecutive pair (i, i+1) with frame i+1 in flight:
    || (x0_pred[i+1] - W x0_pred[i]) - (x0[i+1] - W x0[i]) ||^2, where W is the identity, or
    (when `cond`, the source latents, is given) the global motion from cond[i] to cond[i+1] —
    i.e. flicker is measured along the motion, not across it. channel_weight [C] or None: as in
    `flow_loss`.
    """
    if x0.shape[2] < 2:
        return x0_pred.new_zeros(())
    e = (x0_pred.float() - x0.float())  # [B, C, T, h, w]; the loss depends only on the error
    prev, nxt = e[:, :, :-1], e[:, :, 1:]
    if cond is not None:
        b, c, t1 = prev.shape[:3]
        a = cond[:, :, :-1].transpose(1, 2).reshape(b * t1, c, *cond.shape[-2:])
        bb = cond[:, :, 1:].transpose(1, 2).reshape(b * t1, c, *cond.shape[-2:])
        shifts = global_shift(a, bb)
        p = prev.transpose(1, 2).reshape(b * t1, c, *prev.shape[-2:])
        prev = _roll_rows(p, shifts).reshape(b, t1, c, *prev.shape[-2:]).transpose(1, 2)
    d = squared_error(nxt, prev, channel_weight).mean(dim=(1, 3, 4))  # [B, T-1]
    w = weight[:, 1:]
    return (d * w).sum() / w.sum().clamp(min=1)


# --- STLE: reconstruction ---------------------------------------------------------------------
def ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM of frames a, b [N, 3, H, W] in [0, 1], with a box window (differentiable).

    The training-side SSIM (a box window keeps it cheap); eval.metrics has the reference one.
    """
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    win = min(window, a.shape[-1], a.shape[-2])
    pool = lambda x: F.avg_pool2d(x, win, stride=1)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a ** 2
    var_b = pool(b * b) - mu_b ** 2
    cov = pool(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()


def reconstruction_loss(recon: Tensor, frames: Tensor, ssim_weight: float) -> tuple[Tensor, dict]:
    """L1 + ssim_weight * (1 - SSIM) between recon and frames [B, 3, T, H, W]."""
    l1 = (recon.float() - frames.float()).abs().mean()
    b, c, t, h, w = frames.shape
    flat = lambda x: x.float().transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
    s = ssim(flat(recon), flat(frames))
    return l1 + ssim_weight * (1 - s), {"l1": l1.detach(), "ssim": s.detach()}


def stream_consistency_loss(late: Tensor, latents: Tensor) -> Tensor:
    """A stream started one latent frame later must give the same latents for the same frames.

    latents [B, C, t, h, w] = encode(frames); late [B, C, t-1, h, w] = encode(frames[:, :, 4:])
    with an empty cache. The STLE is causal, so chunked encoding equals whole-clip encoding by
    construction; what training adds is that the start of a stream (an empty cache) changes the
    latents little, so a stream joined mid-video (or after a reset) lines up with one that ran
    from the start.
    """
    if latents.shape[2] < 2:
        return latents.new_zeros(())
    return (late.float() - latents[:, :, 1:].float()).pow(2).mean()
