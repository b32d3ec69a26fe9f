"""Benchmark metrics on known cases (tensors only), the report writers, and bad inputs."""
from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamedit_core.eval import metrics as M
from streamedit_core.eval.report import (contact_sheet, markdown_table, write_json, write_png)


def moving_clip(frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A smooth random image panned one pixel per frame: [T, H, W, 3] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 2, size // 2 + frames, generator=g)
    base = F.interpolate(base, scale_factor=2, mode="bilinear", align_corners=False)[0]
    return torch.stack([base[:, :, t:t + size].permute(1, 2, 0) for t in range(frames)]).clamp(0, 1)


def blur(x: torch.Tensor) -> torch.Tensor:
    y = x.permute(0, 3, 1, 2)
    return F.avg_pool2d(y, 5, stride=1, padding=2, count_include_pad=False).permute(0, 2, 3, 1)


def test_psnr_identical_is_capped_and_offset_is_exact():
    x = moving_clip()
    assert M.psnr(x, x) == M.PSNR_CAP
    y = (x * 0.5) + 0.1  # stays inside [0, 1]
    assert M.psnr(y + 0.1, y) == pytest.approx(20.0, abs=1e-4)  # mse = 0.01


def test_ssim_matches_skimage_and_is_one_on_itself():
    from skimage.metrics import structural_similarity
    x = moving_clip(frames=3, size=40)
    g = torch.Generator().manual_seed(1)
    y = (x + 0.08 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = np.mean([structural_similarity(x[i].numpy(), y[i].numpy(), gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0, channel_axis=-1)
                   for i in range(x.shape[0])])
    assert M.ssim(y, x) == pytest.approx(float(ref), abs=1e-5)
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-9)


def test_identity_keeps_edges_through_colour_edits_not_blur():
    x = moving_clip()
    assert M.structure_agreement(1 - x, x) == pytest.approx(1.0, abs=1e-4)  # invert keeps edges
    assert M.structure_agreement(0.5 * x, x) == pytest.approx(1.0, abs=1e-4)  # so does darker
    grey = M.luma(x).unsqueeze(-1).expand_as(x)
    assert M.structure_agreement(grey, x) > 0.9
    assert M.structure_agreement(blur(x), x) < 0.8
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    assert abs(M.structure_agreement(noise, x)) < 0.2
    flat = x.mean(dim=(1, 2), keepdim=True).expand_as(x).contiguous()
    assert M.structure_agreement(flat, x) == 0.0  # a featureless output keeps nothing
    # identity counts only where the ground truth keeps the structure
    assert M.clip_metrics(1 - x, 1 - x, x)["identity"] == pytest.approx(1.0, abs=1e-4)
    assert M.clip_metrics(blur(x), blur(x), x)["identity"] is None
    # and the structure margin only where it does not: the exact blur took it, the source did not
    assert M.clip_metrics(1 - x, 1 - x, x)["structure_margin"] is None
    assert M.clip_metrics(blur(x), blur(x), x)["structure_margin"] > 0.1
    assert M.clip_metrics(x, blur(x), x)["structure_margin"] < -0.1


def test_temporal_coherence_penalises_flicker_and_shuffling_not_static_error():
    gt = moving_clip(frames=12)
    assert M.temporal_coherence(gt, gt) == 1.0
    # a constant error (same on every frame) is not flicker
    assert M.temporal_coherence(gt * 0.8 + 0.1, gt * 0.8) == pytest.approx(1.0, abs=1e-6)
    sign = torch.tensor([(-1.0) ** t for t in range(12)]).view(-1, 1, 1, 1)
    flicker = (gt * 0.8 + 0.1 + 0.05 * sign).clamp(0, 1)
    shuffled = gt[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert M.temporal_coherence(flicker, gt * 0.8 + 0.1) == pytest.approx(0.9, abs=1e-5)
    assert M.temporal_coherence(shuffled, gt) < M.temporal_coherence(gt, gt) - 0.01
    assert M.temporal_coherence(gt[:1], gt[:1]) == 1.0


def test_flicker_is_the_mean_frame_to_frame_change():
    still = torch.rand(1, 8, 8, 3).expand(5, -1, -1, -1)
    assert M.flicker(still) == 0.0 and M.flicker(still[:1]) == 0.0
    ramp = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 4, 4, 3) * 0.1  # +0.1 per frame everywhere
    assert M.flicker(ramp) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"clip must be a clip \[T, H, W, 3\]"):
        M.flicker(ramp[..., 0])


def test_flicker_ratio_and_the_pooled_ratio_are_made_of_flicker():
    gt = moving_clip(frames=12)
    sign = torch.tensor([(-1.0) ** t for t in range(12)]).view(-1, 1, 1, 1)
    out = (gt + 0.1 * sign).clamp(0, 1)
    eps = M.FLICKER_EPS
    assert M.flicker_ratio(out, gt) == (M.flicker(out) + eps) / (M.flicker(gt) + eps)
    # Pooled: the ratio of the mean flickers, not the mean of the per-clip ratios.
    pooled = M.pooled_flicker([out, gt], [gt, gt])
    assert pooled["flicker"] == pytest.approx((M.flicker(out) + M.flicker(gt)) / 2)
    assert pooled["flicker_ground_truth"] == pytest.approx(M.flicker(gt))
    assert pooled["flicker_ratio"] == pooled["flicker"] / pooled["flicker_ground_truth"]
    with pytest.raises(ValueError, match="as many outputs as targets"):
        M.pooled_flicker([out], [])


def test_flicker_ratio_is_one_for_the_ground_truth_and_above_one_for_flicker():
    gt = moving_clip(frames=12)
    assert M.flicker_ratio(gt, gt) == 1.0
    assert M.flicker_ratio(gt[:1], gt[:1]) == 1.0
    static = gt[:1].expand(12, -1, -1, -1)
    assert M.flicker_ratio(static, static) == 1.0  # 0 / 0 is guarded
    sign = torch.tensor([(-1.0) ** t for t in range(12)]).view(-1, 1, 1, 1)
    flicker = (gt + 0.1 * sign).clamp(0, 1)  # +-0.1 on top of gt's own ~0.1 per frame
    assert M.flicker_ratio(flicker, gt) > 1.5
    assert M.flicker_ratio(static, gt) < 0.01  # frozen motion is below 1, not "coherent"
    # each frame twice as far from the previous one: the ratio is the factor (up to eps)
    assert M.flicker_ratio(2 * gt, gt) == pytest.approx(2.0, rel=1e-2)
    assert M.clip_metrics(flicker, gt, gt)["flicker_ratio"] == M.flicker_ratio(flicker, gt)
    rows = [{"flicker_ratio": 1.0}, {"flicker_ratio": 2.0}]
    assert M.summarize(rows)["flicker_ratio"] == 1.5


def test_motion_smoothness_linear_motion_is_one_and_shuffling_is_worse():
    ramp = torch.linspace(0, 1, 9).view(-1, 1, 1, 1).expand(9, 16, 16, 3)
    assert M.motion_smoothness(ramp) == pytest.approx(1.0, abs=1e-6)
    gt = moving_clip(frames=12)
    shuffled = gt[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert M.motion_smoothness(shuffled) < M.motion_smoothness(gt)
    assert M.motion_smoothness(gt[:2]) == 1.0


def test_overall_quality_is_the_mean_of_the_present_scores():
    scores = {"psnr": 30.0, "ssim": 0.8, "adherence": 1.0, "identity": None,
              "temporal_coherence": 0.9, "motion_smoothness": 0.7}
    assert M.overall_quality(scores) == pytest.approx((0.8 + 1.0 + 0.9 + 0.7) / 4)
    with pytest.raises(ValueError, match="no scores to combine"):
        M.overall_quality({"psnr": 30.0})
    s = M.summarize([{**scores, "overall": 0.5}, {**scores, "identity": 0.6, "overall": 0.7}])
    assert s["identity"] == pytest.approx(0.6) and s["n_identity"] == 1
    assert s["overall"] == pytest.approx(0.6) and s["n_overall"] == 2


def test_bad_inputs_name_the_shapes():
    x = moving_clip()
    with pytest.raises(ValueError, match=r"output has shape \(8, 32, 32, 3\) but target has \(8, 16, 16, 3\)"):
        M.psnr(x, x[:, :16, :16])
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\].*\(8, 3, 32, 32\)"):
        M.ssim(x.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2))
    with pytest.raises(TypeError, match="ndarray"):
        M.motion_smoothness(x.numpy())
    with pytest.raises(TypeError, match="float"):
        M.psnr((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="too small for SSIM"):
        M.ssim(x[:, :8, :8], x[:, :8, :8])


def test_png_round_trip_and_contact_sheet_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    tiles = [tuple(torch.rand(12, 10, 3, generator=g) for _ in range(3)) for _ in range(2)]
    sheet = contact_sheet(tiles)
    assert sheet.shape == (2 * (12 + 2) + 2, 3 * (10 + 2) + 2, 3)
    assert torch.equal(sheet[2 + 14:2 + 14 + 12, 2 + 12:2 + 12 + 10], tiles[1][1])  # row 1, column 1
    path = write_png(sheet, tmp_path / "sheet.png")
    with av.open(str(path)) as c:
        decoded = next(c.decode(video=0)).to_ndarray(format="rgb24")
    expected = (sheet * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(decoded, expected)
    with pytest.raises(ValueError, match=r"tile \(0, 1\) has shape \(5, 10, 3\)"):
        contact_sheet([(tiles[0][0], tiles[0][1][:5])])
    with pytest.raises(ValueError, match=r"\[H, W, 3\], got shape \(3, 12, 10\)"):
        write_png(tiles[0][0].permute(2, 0, 1), tmp_path / "bad.png")


def test_markdown_and_json_reports(tmp_path):
    summary = {"psnr": 100.0, "ssim": 1.0, "adherence": 1.0, "identity": None,
               "temporal_coherence": 1.0, "flicker_ratio": 1.25, "motion_smoothness": 0.95,
               "overall": 0.99, "n_psnr": 2}
    table = markdown_table({"ours": summary})
    header, rule, row = table.strip().splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "ours", "2", "100.00", "1.000", "1.000", "n/a", "1.000", "1.250", "0.950", "0.990"]
    path = write_json({"summary": {"ours": summary}}, tmp_path / "r.json")
    assert json.loads(path.read_text())["summary"]["ours"]["identity"] is None
    with pytest.raises(ValueError):
        write_json({"x": math.nan}, tmp_path / "nan.json")
