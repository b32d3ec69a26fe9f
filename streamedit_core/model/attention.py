"""Self-attention backends for the DiT: dense, frame-window, and Dynamic Sparse Attention (DSA).

All tensors here use the attention layout `[B, L, H, D]` (batch, tokens, heads, head dim).
A window of `T` latent frames is laid out frame by frame, `frame_tokens` tokens each, so
token `i` belongs to frame `i // frame_tokens`.

- `dense`:  every token attends to every token of the window (`F.scaled_dot_product_attention`).
- `window`: a frame attends to itself and the `window_frames` frames before it. Computed per
  query frame against a gathered band of key frames, so the cost is (window_frames + 1) frames
  of keys per frame instead of the whole window; `window_frame_mask` is the same rule as a
  dense boolean mask (the reference the tests compare against).
- `dsa`:    a block mask built from the features themselves by `dsa_block_mask` (the one mask
  rule), turned into per-query-block lists of kept key blocks (`block_lists`), then exact
  attention restricted to them by `torch.ops.streamedit.dsa_attention` (`dsa`): the CUDA
  kernel on bf16 CUDA tensors, the torch reference elsewhere.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .dsa import block_lists  # importing .dsa registers torch.ops.streamedit.dsa_attention
from ..config import ATTENTION_BACKENDS


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str, *, frame_tokens: int,
              window_frames: int = 2, block_size: int = 64, density: float = 0.25,
              global_kv: Tensor | None = None) -> Tensor:
    """Self-attention over a window of frames with the chosen backend.

    q, k, v: [B, L, H, D] with L = frames * frame_tokens (the dsa backend also accepts
             extra key tokens, e.g. text appended to a joint sequence, marked by `global_kv`).
    global_kv: optional [Lk] bool, key tokens every query block must see (dsa only).
    Returns [B, L, H, D].
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}")
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention expects q, k, v as [B, L, H, D] with matching B, H, D; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if backend == "dense":
        return sdpa(q, k, v)
    if backend == "window":
        return window_attention(q, k, v, frame_tokens=frame_tokens, window_frames=window_frames)
    return dsa_attention(q, k, v, block_size=block_size, density=density,
                         frame_tokens=frame_tokens, global_kv=global_kv)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """`F.scaled_dot_product_attention` in our layout: q [B, Lq, H, D], k, v [B, Lk, H, D] ->
    [B, Lq, H, D]; mask broadcastable to [B, H, Lq, Lk] bool, True = attend."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)


# --- Frame window ---------------------------------------------------------------------------

def window_frame_mask(num_frames: int, frame_tokens: int, window_frames: int,
                      device: torch.device | str | None = None) -> Tensor:
    """The window rule as a dense mask: [L, L] bool, True where query frame f may see key frame
    g, i.e. f - window_frames <= g <= f. The reference for `window_attention`."""
    frame = torch.arange(num_frames * frame_tokens, device=device) // frame_tokens
    diff = frame[:, None] - frame[None, :]  # query frame - key frame
    return (diff >= 0) & (diff <= window_frames)


def window_attention(q: Tensor, k: Tensor, v: Tensor, *, frame_tokens: int,
                     window_frames: int) -> Tensor:
    """Each frame attends to itself and the `window_frames` frames before it. [B, L, H, D] -> same.

    Keys are gathered per query frame into a band of (window_frames + 1) frames (frames before
    the window start are padding, masked out), so the work is linear in the number of frames.
    """
    B, L, H, D = q.shape
    if frame_tokens <= 0 or L % frame_tokens or k.shape[1] != L:
        raise ValueError(f"window attention needs q and k of the same length, a multiple of "
                         f"frame_tokens={frame_tokens}; got Lq={L}, Lk={k.shape[1]}")
    if window_frames < 0:
        raise ValueError(f"window_frames must be >= 0, got {window_frames}")
    T, n, W = L // frame_tokens, frame_tokens, min(window_frames, L // frame_tokens - 1)
    qf = q.reshape(B, T, n, H, D)
    # Pad W frames in front, then band[:, f, j] = key frame f - W + j.
    kp = F.pad(k.reshape(B, T, n, H, D), (0, 0, 0, 0, 0, 0, W, 0))  # [B, T+W, n, H, D]
    vp = F.pad(v.reshape(B, T, n, H, D), (0, 0, 0, 0, 0, 0, W, 0))
    idx = torch.arange(T, device=q.device)[:, None] + torch.arange(W + 1, device=q.device)  # [T, W+1]
    kb = kp[:, idx].reshape(B * T, (W + 1) * n, H, D)  # [B*T, (W+1)*n, H, D]
    vb = vp[:, idx].reshape(B * T, (W + 1) * n, H, D)
    valid = (idx >= W).repeat_interleave(n, dim=1)  # [T, (W+1)*n]: key frame index >= 0
    mask = valid[None, :, None, None, :].expand(B, T, 1, 1, (W + 1) * n).reshape(B * T, 1, 1, -1)
    out = sdpa(qf.reshape(B * T, n, H, D), kb, vb, mask)  # [B*T, n, H, D]
    return out.reshape(B, L, H, D)


# --- Dynamic Sparse Attention ---------------------------------------------------------------

def _block_pool(x: Tensor, block_size: int) -> Tensor:
    """Mean over blocks of tokens: [B, L, H, D] -> [B, H, ceil(L / block_size), D]; the last,
    partial block is averaged over its real tokens only."""
    B, L, H, D = x.shape
    nb = math.ceil(L / block_size)
    acc = torch.promote_types(x.dtype, torch.float32)
    xp = F.pad(x, (0, 0, 0, 0, 0, nb * block_size - L)) if nb * block_size != L else x
    # summed in fp32 without an fp32 copy of x (a view for the DiT's k and v)
    sums = xp.reshape(B, nb, block_size, H, D).sum(2, dtype=acc)  # [B, nb, H, D]
    counts = torch.full((nb,), float(block_size), device=x.device, dtype=acc)
    counts[-1] = L - (nb - 1) * block_size
    return (sums / counts[None, :, None, None]).transpose(1, 2)


def _block_frame_range(length: int, block_size: int, frame_tokens: int,
                       device: torch.device) -> tuple[Tensor, Tensor]:
    """First and last frame touched by each block of a sequence of `length` tokens."""
    start = torch.arange(0, length, block_size, device=device)
    end = torch.clamp(start + block_size, max=length) - 1
    return start // frame_tokens, end // frame_tokens


def dsa_block_mask(q: Tensor, k: Tensor, *, block_size: int, density: float, frame_tokens: int,
                   global_kv: Tensor | None = None) -> Tensor:
    """THE DSA mask rule. q: [B, Lq, H, D], k: [B, Lk, H, D] -> [B, H, nq, nk] bool, True = keep.

    1. Mean-pool q and k over blocks of `block_size` tokens (partial last blocks averaged over
       their real tokens); block score = pooled q . pooled k.
    2. Forced blocks: the diagonal (query block i, key block i), every key block sharing a frame
       with the query block (token i is in frame i // frame_tokens; tokens past the video part,
       e.g. appended text, count as frames of their own index), and every key block holding a
       `global_kv` token ([Lk] bool).
    3. Per query block keep k = ceil(density * nk) blocks: the forced ones count first, the rest
       are the highest-scoring others. A row therefore has exactly max(k, #forced) blocks.
    """
    if block_size <= 0:
        raise ValueError(f"dsa block_size must be > 0, got {block_size}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"dsa density must be in (0, 1], got {density}")
    if frame_tokens <= 0:
        raise ValueError(f"frame_tokens must be > 0, got {frame_tokens}")
    Lq, Lk = q.shape[1], k.shape[1]
    nq, nk = math.ceil(Lq / block_size), math.ceil(Lk / block_size)
    scores = _block_pool(q, block_size) @ _block_pool(k, block_size).transpose(-1, -2)  # [B, H, nq, nk]

    qi, ki = torch.arange(nq, device=q.device), torch.arange(nk, device=q.device)
    q_lo, q_hi = _block_frame_range(Lq, block_size, frame_tokens, q.device)
    k_lo, k_hi = _block_frame_range(Lk, block_size, frame_tokens, q.device)
    forced = qi[:, None] == ki[None, :]  # [nq, nk] diagonal
    forced |= (q_lo[:, None] <= k_hi[None, :]) & (k_lo[None, :] <= q_hi[:, None])  # frames overlap
    if global_kv is not None:
        if global_kv.shape != (Lk,):
            raise ValueError(f"global_kv must be a [Lk] = [{Lk}] bool mask, got {tuple(global_kv.shape)}")
        g = F.pad(global_kv.to(torch.bool), (0, nk * block_size - Lk)).reshape(nk, block_size).any(1)
        forced |= g[None, :]

    keep = min(nk, math.ceil(density * nk))
    ranked = scores.masked_fill(forced, float("inf"))  # forced blocks win the top-k first
    top = ranked.topk(keep, dim=-1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
    return mask | forced


def dsa_attention(q: Tensor, k: Tensor, v: Tensor, *, block_size: int, density: float,
                  frame_tokens: int, global_kv: Tensor | None = None) -> Tensor:
    """DSA: exact attention restricted to `dsa_block_mask`. [B, L, H, D] -> same.

    Runs `torch.ops.streamedit.dsa_attention` on the mask's block lists: the CUDA kernel where
    it applies (`dsa.kernel_supports`), else the torch reference. No host sync either way.
    """
    block_mask = dsa_block_mask(q, k, block_size=block_size, density=density,
                                frame_tokens=frame_tokens, global_kv=global_kv)
    counts, indices = block_lists(block_mask)
    return torch.ops.streamedit.dsa_attention(q, k, v, counts, indices, block_size)
