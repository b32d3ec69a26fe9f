"""STLE: the causal spatio-temporal latent autoencoder (4x in time, 8x in space, 12 channels).

Video frames `[B, 3, T, H, W]` in `[0, 1]` <-> latents `[B, 12, T/4, H/8, W/8]` (12 =
`latent_channels`: the paper's 12; the demo preset has 384), after the
Movie Gen temporal autoencoder (https://arxiv.org/abs/2410.13720, section 3.1.1) made causal in
time, as in CV-VAE / MAGVIT-v2 (https://arxiv.org/abs/2310.05737): every convolution over time
sees only the current and earlier frames, so a stream can be coded chunk by chunk.

Causality and the cache
- Convolutions are (2+1)D (a spatial conv, then a temporal one), as in Movie Gen. The temporal
  conv pads `k - 1` frames on the left: at the start of a stream a replicate of the first frame,
  later the last `k - 1` input frames of the previous chunk, kept in a `CausalCache`.
- Temporal downsampling is a stride-2 convolution with a time kernel of 2 (pairs of frames
  folded into channels, no overlap) and temporal upsampling is nearest repetition followed by a
  causal convolution, so chunk boundaries that fall on multiples of 4 frames are exact.
- Norms are per pixel and per frame (RMS over channels), never pooled over time (GroupNorm over
  a `[C, T, H, W]` block would let later frames change earlier ones).
Hence `encode(a, c); encode(b, c)` equals `encode(cat(a, b))` up to float rounding, and the same
for `decode`, for any split into multiples of 4 frames (encode) or of 1 latent frame (decode).
Cached tails are detached: a chunked training step does not backpropagate into earlier chunks.

Clip lengths: `encode` requires `T % 4 == 0`. A clip whose length is not a multiple of 4 is the
caller's job: the pipeline pads the tail by repeating the last frame up to the next multiple of
4, and trims the decoded output back to the input length. Because the model is causal, the
padding changes none of the frames before it.

Linear path. Besides the convolutional encoder and decoder, a linear map runs from every
block of 4 x 8 x 8 pixels straight to its latent pixel and back (space-to-depth, a 1x1x1 conv;
the residual autoencoding of DC-AE, https://arxiv.org/abs/2410.10733, in its simplest form).
`init_linear_path` sets it to the data's principal components and zeroes the convolutional
branches' last layers, so training starts from the best linear autoencoder (PCA) instead of
from noise, and the convolutions learn what a linear code misses. Its blocks are aligned to
the strides, so chunked coding stays exact.

The autoencoder is deterministic (no KL sampling); latents are normalised with the buffers
`latent_mean` / `latent_std` (per channel; 0 / 1 until training measures them), stored in the
checkpoint with the weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import STLEConfig


# --- Cache ---------------------------------------------------------------------------------

class CausalCache:
    """The stream state of one direction (encode or decode): per causal conv, the last `k - 1`
    frames its time conv saw, `[B, C, k - 1, H, W]`, or None at the start of a stream.

    Mutable: `encode`/`decode` update it in place. Keys are the convs' module names, fixed by the
    config, so a state dict saved from one STLE loads into any STLE of the same config.
    """

    def __init__(self, keys: list[str]) -> None:
        self._tails: dict[str, Tensor | None] = {k: None for k in keys}

    @property
    def started(self) -> bool:
        """True once a chunk has gone through (the cache then continues a stream)."""
        return any(t is not None for t in self._tails.values())

    def __contains__(self, key: str) -> bool:
        return key in self._tails

    def get(self, key: str) -> Tensor | None:
        return self._tails.get(key)

    def set(self, key: str, tail: Tensor) -> None:
        if key not in self._tails:
            raise KeyError(f"cache has no slot {key!r}")  # internal: keys come from the model
        self._tails[key] = tail

    def reset(self) -> None:
        for k in self._tails:
            self._tails[k] = None

    def state_dict(self) -> dict[str, Tensor | None]:
        return dict(self._tails)

    def load_state_dict(self, d: dict[str, Tensor | None]) -> None:
        if set(d) != set(self._tails):
            missing = sorted(set(self._tails) - set(d))
            unexpected = sorted(set(d) - set(self._tails))
            raise ValueError(f"cache state does not match this STLE: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]} (was it saved from another config?)")
        for k, v in d.items():
            if v is not None and not isinstance(v, Tensor):
                raise TypeError(f"cache state {k!r}: expected a Tensor or None, got {type(v).__name__}")
            self._tails[k] = v

    def clone(self) -> "CausalCache":
        new = CausalCache(list(self._tails))
        new._tails = {k: None if v is None else v.clone() for k, v in self._tails.items()}
        return new

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "CausalCache":
        """Move the cached tails in place (e.g. offload a paused stream to CPU); returns self."""
        for k, v in self._tails.items():
            if v is not None:
                self._tails[k] = v.to(device=device, dtype=dtype)
        return self


# --- Layers --------------------------------------------------------------------------------

class CausalConv3d(nn.Module):
    """A (2+1)D convolution, as in Movie Gen's TAE: a `ks x ks` conv in space, then a causal conv
    of `kt` taps in time (12 C^2 weights instead of 27 C^2 for a full 3x3x3 kernel).

    The time conv pads `kt - 1` frames on the left: a replicate of the first frame at the start of
    a stream, else the previous chunk's last frames from the cache. `cache_key` is set by the
    owning STLE to the module's name; it indexes the CausalCache.
    """

    def __init__(self, in_ch: int, out_ch: int, kt: int, ks: int = 3, *, ops, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.kt = kt
        self.cache_key = ""
        self.spatial = ops.Conv3d(in_ch, out_ch, (1, ks, ks), padding=(0, ks // 2, ks // 2),
                                  device=device, dtype=dtype)
        self.temporal = (ops.Conv3d(out_ch, out_ch, (kt, 1, 1), device=device, dtype=dtype)
                         if kt > 1 else None)

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:  # [B, C, T, H, W]
        x = self.spatial(x)
        if self.temporal is None:
            return x
        tail = cache.get(self.cache_key) if cache is not None else None
        if tail is None:  # start of a stream: repeat the first frame
            tail = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
        x = torch.cat([tail.to(x.dtype), x], dim=2)  # [B, C, kt - 1 + T, H, W]
        if cache is not None:
            # clone: own the memory instead of keeping the whole padded chunk alive via a view
            cache.set(self.cache_key, x[:, :, -(self.kt - 1):].detach().clone())
        return self.temporal(x)  # [B, C, T, H, W]


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each pixel of each frame: causal, resolution independent."""

    def __init__(self, channels: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W]
        rms = torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        # .to(device): ComfyUI's low-VRAM mode may leave modules without cast-on-the-fly ops on CPU
        return x * rms * self.weight.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, kt: int, *, ops, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        self.norm1 = ChannelRMSNorm(in_ch, device=device, dtype=dtype)
        self.conv1 = CausalConv3d(in_ch, out_ch, kt, **kw)
        self.norm2 = ChannelRMSNorm(out_ch, device=device, dtype=dtype)
        self.conv2 = CausalConv3d(out_ch, out_ch, kt, **kw)
        self.skip = (ops.Conv3d(in_ch, out_ch, 1, device=device, dtype=dtype)
                     if in_ch != out_ch else None)

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return h + (self.skip(x) if self.skip is not None else x)


class Downsample(nn.Module):
    """2x in space (and in time if `temporal`): one strided conv. The time kernel equals the
    time stride, so output frame i sees input frames 2i and 2i + 1 only: no cache needed."""

    def __init__(self, ch: int, temporal: bool, *, ops, device=None, dtype=None) -> None:
        super().__init__()
        st = 2 if temporal else 1
        self.conv = ops.Conv3d(ch, ch, (st, 3, 3), stride=(st, 2, 2), padding=(0, 1, 1),
                               device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W] -> [B, C, T/st, H/2, W/2]
        return self.conv(x)


class Upsample(nn.Module):
    """2x in space (and in time if `temporal`): nearest repeat, then a causal conv."""

    def __init__(self, ch: int, temporal: bool, kt: int, *, ops, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = (2.0 if temporal else 1.0, 2.0, 2.0)
        self.conv = CausalConv3d(ch, ch, kt, ops=ops, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="nearest")  # [B, C, 2T?, 2H, 2W]
        return self.conv(x, cache)


# --- Linear path ---------------------------------------------------------------------------

def space_to_depth(x: Tensor, t: int, s: int) -> Tensor:
    """[B, C, T, H, W] -> [B, C*t*s*s, T/t, H/s, W/s]: each t x s x s block becomes one pixel."""
    b, c, T, H, W = x.shape
    x = x.reshape(b, c, T // t, t, H // s, s, W // s, s).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * t * s * s, T // t, H // s, W // s)


def depth_to_space(x: Tensor, c: int, t: int, s: int) -> Tensor:
    """Inverse of `space_to_depth`: [B, c*t*s*s, T, H, W] -> [B, c, T*t, H*s, W*s]."""
    b, _, T, H, W = x.shape
    x = x.reshape(b, c, t, s, s, T, H, W).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, T * t, H * s, W * s)


# --- Encoder / decoder ---------------------------------------------------------------------

class Encoder(nn.Module):
    def __init__(self, cfg: STLEConfig, *, ops, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        kt, ch = cfg.temporal_kernel, cfg.channels
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], kt, **kw)
        self.levels = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.res_blocks):
                level.blocks.append(ResBlock(prev, c, kt, **kw))
                prev = c
            level.down = Downsample(c, cfg.temporal_down[i], **kw) if i < len(ch) - 1 else None
            self.levels.append(level)
        self.mid = ResBlock(prev, prev, kt, **kw)
        self.norm_out = ChannelRMSNorm(prev, device=device, dtype=dtype)
        self.conv_out = CausalConv3d(prev, cfg.latent_channels, kt, **kw)
        self.strides = (cfg.temporal_stride, cfg.spatial_stride)
        block = cfg.in_channels * cfg.temporal_stride * cfg.spatial_stride ** 2
        self.patch_in = ops.Conv3d(block, cfg.latent_channels, 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        linear = self.patch_in(space_to_depth(x, *self.strides))  # [B, 12, T/4, H/8, W/8]
        h = self.conv_in(x, cache)  # [B, c0, T, H, W]
        for level in self.levels:
            for block in level.blocks:
                h = block(h, cache)
            if level.down is not None:
                h = level.down(h)
        h = self.mid(h, cache)  # [B, c_last, T/4, H/8, W/8]
        return linear + self.conv_out(F.silu(self.norm_out(h)), cache)


class Decoder(nn.Module):
    def __init__(self, cfg: STLEConfig, *, ops, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        kt, ch = cfg.temporal_kernel, cfg.channels
        prev = ch[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, prev, kt, **kw)
        self.mid = ResBlock(prev, prev, kt, **kw)
        # levels from coarse to fine; level i upsamples what the encoder's level i-1 downsampled
        self.levels = nn.ModuleList()
        for i in reversed(range(len(ch))):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.res_blocks + 1):
                level.blocks.append(ResBlock(prev, ch[i], kt, **kw))
                prev = ch[i]
            level.up = Upsample(prev, cfg.temporal_down[i - 1], kt, **kw) if i > 0 else None
            self.levels.append(level)
        self.norm_out = ChannelRMSNorm(prev, device=device, dtype=dtype)
        self.conv_out = CausalConv3d(prev, cfg.in_channels, kt, **kw)
        self.unblock = (cfg.in_channels, cfg.temporal_stride, cfg.spatial_stride)  # depth_to_space
        block = cfg.in_channels * cfg.temporal_stride * cfg.spatial_stride ** 2
        self.patch_out = ops.Conv3d(cfg.latent_channels, block, 1, device=device, dtype=dtype)

    def forward(self, z: Tensor, cache: CausalCache | None) -> Tensor:
        linear = depth_to_space(self.patch_out(z), *self.unblock)  # [B, 3, 4t, 8h, 8w]
        h = self.mid(self.conv_in(z, cache), cache)  # [B, c_last, t, h, w]
        for level in self.levels:
            for block in level.blocks:
                h = block(h, cache)
            if level.up is not None:
                h = level.up(h, cache)
        return linear + self.conv_out(F.silu(self.norm_out(h)), cache)  # [B, 3, 4t, 8h, 8w]


# --- Model ---------------------------------------------------------------------------------

class STLE(nn.Module):
    """Causal video autoencoder. `encode`: frames `[B, 3, T, H, W]` float in `[0, 1]`, `T % 4 == 0`,
    `H, W % 8 == 0` -> normalised latents `[B, 12, T/4, H/8, W/8]`. `decode`: the inverse, frames
    clamped to `[0, 1]`. Pass a `new_cache()` (one per direction) to code a stream in chunks."""

    def __init__(self, cfg: STLEConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, operations=None) -> None:
        super().__init__()
        if len(cfg.temporal_down) != len(cfg.channels) - 1:
            raise ValueError(f"STLEConfig: temporal_down has {len(cfg.temporal_down)} entries, "
                             f"expected one per downsample ({len(cfg.channels) - 1})")
        if cfg.temporal_kernel < 1 or cfg.res_blocks < 0:
            raise ValueError(f"STLEConfig: temporal_kernel={cfg.temporal_kernel} must be >= 1 and "
                             f"res_blocks={cfg.res_blocks} >= 0")
        ops = operations if operations is not None else nn
        self.cfg = cfg
        self.encoder = Encoder(cfg, ops=ops, device=device, dtype=dtype)
        self.decoder = Decoder(cfg, ops=ops, device=device, dtype=dtype)
        # set by training (per-channel statistics of raw latents); stored in the checkpoint
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels, device=device, dtype=dtype))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels, device=device, dtype=dtype))
        for name, m in self.named_modules():
            if isinstance(m, CausalConv3d):
                m.cache_key = name
        self._enc_keys = [n for n, m in self.encoder.named_modules(prefix="encoder")
                          if isinstance(m, CausalConv3d) and m.kt > 1]
        self._dec_keys = [n for n, m in self.decoder.named_modules(prefix="decoder")
                          if isinstance(m, CausalConv3d) and m.kt > 1]

    @property
    def temporal_stride(self) -> int:
        return self.cfg.temporal_stride

    @property
    def spatial_stride(self) -> int:
        return self.cfg.spatial_stride

    def new_cache(self) -> CausalCache:
        """An empty stream state; use one for encoding and another for decoding."""
        return CausalCache(self._enc_keys + self._dec_keys)

    # 1. checks ----------------------------------------------------------------------------
    def _compute_dtype(self) -> torch.dtype:
        dt = self.latent_std.dtype
        return dt if dt.is_floating_point else torch.float32

    def _check(self, x: Tensor, what: str, channels: int, t_mult: int, s_mult: int,
               cache: CausalCache | None, first_key: str, check_finite: bool) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"STLE {what}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"STLE {what}: expected a floating point tensor, got {x.dtype}")
        if x.dim() != 5 or x.shape[1] != channels:
            raise ValueError(f"STLE {what}: expected shape [B, {channels}, T, H, W], "
                             f"got {tuple(x.shape)}")
        _, _, t, h, w = x.shape
        if t == 0 or t % t_mult:
            raise ValueError(f"STLE {what}: T={t} frames must be a positive multiple of {t_mult} "
                             "(pad the tail by repeating the last frame, then trim the output)")
        if h == 0 or w == 0 or h % s_mult or w % s_mult:
            raise ValueError(f"STLE {what}: H x W = {h} x {w} must be positive multiples of {s_mult}")
        if cache is not None:
            if not isinstance(cache, CausalCache):
                raise TypeError(f"STLE {what}: cache must be a CausalCache, got {type(cache).__name__}")
            tail = cache.get(first_key)
            if tail is not None and (tail.shape[0], *tail.shape[3:]) != (x.shape[0], h, w):
                raise ValueError(
                    f"STLE {what}: the cache continues a stream of batch {tail.shape[0]} and size "
                    f"{tail.shape[3]} x {tail.shape[4]}, got batch {x.shape[0]} and size {h} x {w}; "
                    "start a new cache for a new stream")
        # one host sync: the streaming hot path may skip it with check_finite=False
        if check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(f"STLE {what}: input contains NaN or Inf")

    # 2. encode / decode -------------------------------------------------------------------
    def encode(self, frames: Tensor, cache: CausalCache | None = None, *,
               check_finite: bool = True) -> Tensor:
        """frames `[B, 3, T, H, W]` in `[0, 1]` -> latents `[B, 12, T/4, H/8, W/8]`.

        `cache=None`: the clip is a whole stream from its start. With a cache: continues the
        stream it holds (and updates it), so chunked encoding equals encoding the whole clip.
        `check_finite=False` skips the NaN/Inf check, a host sync, for per-chunk streaming loops.
        """
        cfg = self.cfg
        self._check(frames, "encode frames", cfg.in_channels, cfg.temporal_stride,
                    cfg.spatial_stride, cache, "encoder.conv_in", check_finite)
        dt = self._compute_dtype()
        x = frames.to(dt) * 2.0 - 1.0  # [0, 1] -> [-1, 1]
        z = self.encoder(x, cache)  # [B, 12, T/4, H/8, W/8]
        mean = self.latent_mean.to(x.device, dt).view(1, -1, 1, 1, 1)
        std = self.latent_std.to(x.device, dt).view(1, -1, 1, 1, 1)
        return (z - mean) / std

    def decode(self, latents: Tensor, cache: CausalCache | None = None, *,
               check_finite: bool = True, clamp: bool = True) -> Tensor:
        """latents `[B, 12, t, h, w]` -> frames `[B, 3, 4t, 8h, 8w]` in `[0, 1]`; cached like encode.

        `clamp=False` returns the raw output (about `[0, 1]`), for reconstruction losses whose
        gradient should not vanish outside the range.
        """
        cfg = self.cfg
        self._check(latents, "decode latents", cfg.latent_channels, 1, 1, cache,
                    "decoder.conv_in", check_finite)
        dt = self._compute_dtype()
        mean = self.latent_mean.to(latents.device, dt).view(1, -1, 1, 1, 1)
        std = self.latent_std.to(latents.device, dt).view(1, -1, 1, 1, 1)
        x = self.decoder(latents.to(dt) * std + mean, cache)  # [B, 3, 4t, 8h, 8w] in ~[-1, 1]
        x = (x + 1.0) * 0.5
        return x.clamp(0.0, 1.0) if clamp else x

    # 3. the linear path alone (the pixel refiner's view) -----------------------------------
    def linear_decode(self, latents: Tensor) -> Tensor:
        """latents `[B, C, t, h, w]` -> frames `[B, 3, 4t, 8h, 8w]` in `[0, 1]` through the
        linear path alone: what `decode` returns while its convolutions are zero (a PCA STLE,
        `init_linear_path`), with no causal state, so any single latent frame can be viewed."""
        dt = self._compute_dtype()
        mean = self.latent_mean.to(latents.device, dt).view(1, -1, 1, 1, 1)
        std = self.latent_std.to(latents.device, dt).view(1, -1, 1, 1, 1)
        dec = self.decoder
        x = depth_to_space(dec.patch_out(latents.to(dt) * std + mean), *dec.unblock)
        return ((x + 1.0) * 0.5).clamp(0.0, 1.0)

    def linear_encode_delta(self, delta: Tensor) -> Tensor:
        """A change of frames `[B, 3, 4t, 8h, 8w]` (in `[0, 1]` units) -> the change of the
        normalised latents `[B, C, t, h, w]` that the linear path codes for it (its projection
        onto the code: `linear_decode` of the sum moves by that part of `delta`)."""
        dt = self._compute_dtype()
        enc = self.encoder
        blocks = space_to_depth(delta.to(dt) * 2.0, *enc.strides)  # [0, 1] units -> [-1, 1]
        z = F.conv3d(blocks, enc.patch_in.weight.to(blocks.device, dt))  # no bias: a change
        return z / self.latent_std.to(blocks.device, dt).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def init_linear_path(self, frames: Tensor) -> None:
        """Start training from PCA: the linear path gets the top principal components of the
        pixel blocks of `frames` [B, 3, T, H, W] in [0, 1], and the last conv of each branch is
        zeroed, so encode/decode start as the best linear code of that data."""
        enc, dec, k = self.encoder, self.decoder, self.cfg.latent_channels
        blocks = space_to_depth(frames.float() * 2 - 1, *enc.strides)  # [B, D, t, h, w]
        rows = blocks.permute(0, 2, 3, 4, 1).reshape(-1, blocks.shape[1])  # [N, D]
        if rows.shape[0] < k:
            raise ValueError(f"init_linear_path: {rows.shape[0]} pixel blocks, need at least "
                             f"latent_channels={k}; pass more or larger frames")
        mean = rows.mean(0)
        _, _, v = torch.linalg.svd(rows - mean, full_matrices=False)
        basis = v[:k]  # [k, D], orthonormal rows
        w = enc.patch_in.weight
        w.copy_(basis.view(k, -1, 1, 1, 1).to(w.dtype))
        enc.patch_in.bias.copy_((-basis @ mean).to(w.dtype))
        dec.patch_out.weight.copy_(basis.t().reshape(-1, k, 1, 1, 1).to(w.dtype))
        dec.patch_out.bias.copy_(mean.to(w.dtype))
        for conv in (enc.conv_out, dec.conv_out):
            last = conv.temporal if conv.temporal is not None else conv.spatial
            last.weight.zero_()
            last.bias.zero_()

    def forward(self, frames: Tensor) -> Tensor:
        """Reconstruction of a whole clip for training: decode(encode(frames)), unclamped."""
        return self.decode(self.encode(frames), clamp=False)

