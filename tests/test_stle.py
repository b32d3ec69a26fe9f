"""STLE: shapes, causality, chunked == whole (encode and decode), cache state, bad inputs."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from streamedit_core.config import PRESETS, STLEConfig
from streamedit_core.model.stle import STLE, CausalCache

ATOL = 1e-5


def make_stle(cfg: STLEConfig | None = None, seed: int = 0) -> STLE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = STLE(cfg or PRESETS["tiny"].stle)
        # random (non-trivial) latent statistics, so normalisation is part of every check
        model.latent_mean.uniform_(-0.5, 0.5)
        model.latent_std.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def stle() -> STLE:
    return make_stle()


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 32, 48, generator=g)  # [B, 3, T, H, W]


def encode_chunks(model: STLE, frames: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    cache = model.new_cache()
    out, start = [], 0
    for n in sizes:
        out.append(model.encode(frames[:, :, start:start + n], cache))
        start += n
    return torch.cat(out, dim=2)


def decode_chunks(model: STLE, latents: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    cache = model.new_cache()
    out, start = [], 0
    for n in sizes:
        out.append(model.decode(latents[:, :, start:start + n], cache))
        start += n
    return torch.cat(out, dim=2)


@torch.no_grad()
def test_shapes_and_range(stle, clip):
    z = stle.encode(clip)
    assert z.shape == (2, 12, 4, 4, 6) and z.dtype == torch.float32
    x = stle.decode(z)
    assert x.shape == clip.shape
    assert x.min() >= 0.0 and x.max() <= 1.0


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[4, 4, 4, 4], [8, 8], [4, 12], [12, 4], [8, 4, 4]])
def test_chunked_encode_equals_whole(stle, clip, sizes):
    whole = stle.encode(clip)
    torch.testing.assert_close(encode_chunks(stle, clip, sizes), whole, atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [2, 2], [3, 1], [1, 3]])
def test_chunked_decode_equals_whole(stle, clip, sizes):
    z = stle.encode(clip)
    whole = stle.decode(z)
    torch.testing.assert_close(decode_chunks(stle, z, sizes), whole, atol=ATOL, rtol=0)


@torch.no_grad()
def test_causal_and_mixes_time(stle, clip):
    """Later frames never change earlier latents/frames, and earlier ones do reach later ones
    (so the chunked tests above really exercise the cache)."""
    changed = clip.clone()
    changed[:, :, 12:] = torch.rand_like(changed[:, :, 12:])
    z, z2 = stle.encode(clip), stle.encode(changed)
    torch.testing.assert_close(z2[:, :, :3], z[:, :, :3], atol=0, rtol=0)
    assert (z2[:, :, 3] - z[:, :, 3]).abs().max() > 1e-3

    early = clip.clone()
    early[:, :, :4] = 0.5
    assert (stle.encode(early)[:, :, 1:] - z[:, :, 1:]).abs().max() > 1e-4

    zc = z.clone()
    zc[:, :, 0] += 1.0
    x, xc = stle.decode(z), stle.decode(zc)
    assert (xc[:, :, 4:] - x[:, :, 4:]).abs().max() > 1e-4  # latent 0 reaches frames 4..15
    zc = z.clone()
    zc[:, :, 3] += 1.0
    torch.testing.assert_close(stle.decode(zc)[:, :, :12], x[:, :, :12], atol=0, rtol=0)


@torch.no_grad()
def test_cache_state_dict_round_trip_and_clone(stle, clip):
    whole = stle.encode(clip)
    cache = stle.new_cache()
    assert not cache.started
    first = stle.encode(clip[:, :, :8], cache)
    assert cache.started

    resumed = stle.new_cache()
    resumed.load_state_dict(cache.state_dict())
    fork = cache.clone()
    second = stle.encode(clip[:, :, 8:], resumed)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, atol=ATOL, rtol=0)

    # the clone is independent: advancing `cache` with other frames does not touch it
    stle.encode(torch.zeros_like(clip[:, :, 8:12]), cache)
    torch.testing.assert_close(stle.encode(clip[:, :, 8:], fork), second, atol=0, rtol=0)

    cache.reset()
    assert not cache.started
    torch.testing.assert_close(stle.encode(clip[:, :, :8], cache), first, atol=0, rtol=0)


@torch.no_grad()
def test_latent_normalisation_uses_buffers(clip):
    model = make_stle()
    z = model.encode(clip)
    x = model.decode(z)
    mean, std = model.latent_mean.clone(), model.latent_std.clone()
    model.latent_mean.zero_()
    model.latent_std.fill_(1.0)
    raw = model.encode(clip)
    torch.testing.assert_close(z, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1),
                               atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(model.decode(raw), x, atol=ATOL, rtol=0)
    assert {"latent_mean", "latent_std"} <= set(model.state_dict())


@torch.no_grad()
def test_channels_last_input_and_temporal_kernel_one(clip):
    model = make_stle()
    cl = clip.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(model.encode(cl), model.encode(clip), atol=ATOL, rtol=1e-5)

    per_frame = make_stle(STLEConfig(channels=(8, 8, 8, 8), temporal_kernel=1))
    assert per_frame.new_cache().state_dict() == {}
    torch.testing.assert_close(encode_chunks(per_frame, clip, [4, 4, 8]), per_frame.encode(clip),
                               atol=ATOL, rtol=0)


def test_operations_injection():
    made = []

    class CountingConv3d(nn.Conv3d):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    ops = types.SimpleNamespace(Conv3d=CountingConv3d)
    model = STLE(PRESETS["tiny"].stle, operations=ops)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs and len(made) == len(convs)


def test_meta_device_and_dtype():
    with torch.device("meta"):
        model = STLE(PRESETS["tiny"].stle)
    assert all(p.is_meta for p in model.parameters())
    model = STLE(PRESETS["tiny"].stle, dtype=torch.float64)
    assert model.latent_std.dtype == torch.float64
    with torch.no_grad():
        assert model.encode(torch.rand(1, 3, 4, 8, 8)).dtype == torch.float64


@pytest.mark.parametrize("frames, exc, words", [
    (torch.rand(3, 4, 16, 16), ValueError, "[B, 3, T, H, W]"),
    (torch.rand(1, 4, 4, 16, 16), ValueError, "got (1, 4, 4, 16, 16)"),
    (torch.rand(1, 3, 6, 16, 16), ValueError, "T=6 frames must be a positive multiple of 4"),
    (torch.rand(1, 3, 0, 16, 16), ValueError, "T=0"),
    (torch.rand(1, 3, 4, 20, 16), ValueError, "20 x 16 must be positive multiples of 8"),
    (torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8), TypeError, "torch.uint8"),
    (torch.full((1, 3, 4, 16, 16), float("nan")), ValueError, "NaN or Inf"),
    ([[0.0]], TypeError, "got list"),
])
def test_encode_bad_inputs(stle, frames, exc, words):
    with pytest.raises(exc) as info:
        stle.encode(frames)
    assert words in str(info.value)


def test_decode_bad_inputs(stle):
    with pytest.raises(ValueError, match=r"\[B, 12, T, H, W\], got \(1, 11, 1, 2, 2\)"):
        stle.decode(torch.zeros(1, 11, 1, 2, 2))
    with pytest.raises(ValueError, match="NaN or Inf"):
        stle.decode(torch.full((1, 12, 1, 2, 2), float("inf")))


@torch.no_grad()
def test_cache_misuse(stle):
    cache = stle.new_cache()
    stle.encode(torch.rand(1, 3, 4, 16, 16), cache)
    with pytest.raises(ValueError, match="size 16 x 16, got batch 1 and size 32 x 16"):
        stle.encode(torch.rand(1, 3, 4, 32, 16), cache)
    with pytest.raises(ValueError, match="batch 1 and size 16 x 16, got batch 2"):
        stle.encode(torch.rand(2, 3, 4, 16, 16), cache)
    with pytest.raises(TypeError, match="CausalCache, got dict"):
        stle.encode(torch.rand(1, 3, 4, 16, 16), {})
    small = make_stle(STLEConfig(channels=(8, 8, 8, 8), res_blocks=0)).new_cache()
    with pytest.raises(ValueError, match="cache state does not match this STLE"):
        small.load_state_dict(cache.state_dict())
    with pytest.raises(TypeError, match="expected a Tensor or None, got list"):
        cache.load_state_dict({k: [] for k in cache.state_dict()})
    assert isinstance(cache, CausalCache)


def test_bad_config():
    with pytest.raises(ValueError, match="temporal_down has 2 entries, expected one per downsample"):
        STLE(STLEConfig(channels=(8, 8, 8, 8), temporal_down=(True, True)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_bf16_chunked_matches_whole():
    model = make_stle().to("cuda", torch.bfloat16).to(memory_format=torch.channels_last_3d)
    x = torch.rand(1, 3, 16, 64, 64, device="cuda")
    whole = model.encode(x)
    chunked = encode_chunks(model, x, [4, 4, 4, 4])
    torch.testing.assert_close(chunked, whole, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(decode_chunks(model, whole, [1, 1, 1, 1]), model.decode(whole),
                               atol=2e-2, rtol=2e-2)


def test_every_parameter_gets_a_gradient():
    model = make_stle().train()
    frames = torch.rand(1, 3, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    recon = model(frames)  # unclamped reconstruction, for training
    assert recon.shape == frames.shape
    (recon - frames).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


@torch.no_grad()
def test_init_linear_path_starts_at_pca():
    """After init_linear_path, encode -> decode is exactly the projection onto the top
    principal components of the 4 x 8 x 8 pixel blocks, which beats an untrained STLE by far."""
    from streamedit_core.data.synthetic import photo_clip

    clips = torch.stack([photo_clip("coffee", frames=8, size=32, seed=s).permute(3, 0, 1, 2)
                         for s in range(4)])  # [4, 3, 8, 32, 32], real photo content
    model = make_stle()
    untrained = _psnr(model.decode(model.encode(clips)), clips)
    model.init_linear_path(clips)
    model.latent_mean.zero_(), model.latent_std.fill_(1.0)
    recon = model.decode(model.encode(clips), clamp=False)

    k = model.cfg.latent_channels
    rows = (clips * 2 - 1).reshape(4, 3, 2, 4, 4, 8, 4, 8).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(-1, 768)
    mean = rows.mean(0)
    v = torch.linalg.svd(rows - mean, full_matrices=False)[2][:k]
    proj = ((rows - mean) @ v.T @ v + mean).reshape(4, 2, 4, 4, 3, 4, 8, 8).permute(0, 4, 1, 5, 2, 6, 3, 7)
    expected = (proj.reshape(4, 3, 8, 32, 32) + 1) / 2
    assert torch.allclose(recon, expected, atol=1e-4)
    assert _psnr(recon.clamp(0, 1), clips) > untrained + 5


def test_init_linear_path_needs_enough_blocks():
    with pytest.raises(ValueError, match="need at least latent_channels=12"):
        make_stle().init_linear_path(torch.rand(1, 3, 4, 16, 8))  # 2 pixel blocks
