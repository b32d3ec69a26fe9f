"""Dynamic Sparse Attention on block lists: the CUDA kernel (`kernels/dsa_attention.cu`, compiled by
CuPy) behind one `torch.library` custom op, with the exact torch reference as fallback and oracle.

`torch.ops.streamedit.dsa_attention(q, k, v, kv_counts, kv_indices, block_size)`:
  q [B, Lq, H, D], k, v [B, Lk, H, D]; kv_counts [B, H, nq] int32 and kv_indices [B, H, nq, nk]
  int32 (`block_lists` of a block mask): query block i of head h keeps key blocks
  kv_indices[b, h, i, :kv_counts[b, h, i]], ascending. Returns [B, Lq, H, D]; softmax scale
  1 / sqrt(D); a query block keeping no key block gets zeros.

The kernel runs where `kernel_supports` says so (CUDA sm_80+, bf16, head dim 64 or 128, blocks of
64 or 128, CuPy installed), on torch's current stream and without host synchronisation, so it can be
captured in a CUDA graph; `torch.compile` sees an opaque op with a fake (meta) implementation.
Everywhere else, or with STREAMEDIT_DSA_KERNEL=0 in the environment, the op runs `reference`.

Training: the op has an autograd formula. Its backward is a second op,
`torch.ops.streamedit.dsa_attention_backward(grad, q, k, v, kv_counts, kv_indices, block_size)
-> (dq, dk, dv)`, also opaque to `torch.compile` (with a fake), whose implementation is
`reference_backward`: the masked-attention backward in torch (it materialises the [B, H, Lq, Lk]
scores, as `reference` does; a CUDA backward kernel can take its place later). The gradients are
those of `reference`, whichever implementation ran the forward.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

KERNEL_SOURCE = Path(__file__).resolve().parents[2] / "kernels" / "dsa_attention.cu"
HEAD_DIMS = (64, 128)
BLOCK_SIZES = (64, 128)
TILE_N = 64  # keys per tile, as in the kernel
# (head dim, block size, query rows per CTA): a block of 128 runs as one CTA of 8 warps, or as
# two of 4 warps (more CTAs per SM, twice the K/V loads); STREAMEDIT_DSA_ROWS=64 picks the latter.
VARIANTS = tuple((d, b, r) for d in HEAD_DIMS for b in BLOCK_SIZES for r in (64, 128) if b % r == 0)


# --- block lists --------------------------------------------------------------------------

def block_lists(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Block mask [..., nq, nk] bool -> the kernel's (and flex_attention's) block lists.

    Returns kv_counts [..., nq] int32 (kept blocks per query block) and kv_indices [..., nq, nk]
    int32 whose first kv_counts entries per row are the kept key blocks, ascending (the rest is
    padding). Fixed-stride CSR: no `nonzero`, so no host sync and one shape per mask shape.
    """
    counts = mask.sum(-1, dtype=torch.int32)
    # kept block columns first, in increasing order (stable sort of the 0/1 flags)
    indices = mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, indices


def lists_to_block_mask(kv_counts: Tensor, kv_indices: Tensor) -> Tensor:
    """Block lists -> [..., nq, nk] bool block mask: the inverse of `block_lists`."""
    nk = kv_indices.shape[-1]
    used = torch.arange(nk, device=kv_indices.device) < kv_counts[..., None].long()  # [..., nq, nk]
    # unused entries go to an extra column, dropped after: no write can clobber a kept block
    cols = torch.where(used, kv_indices.long(), nk)
    mask = torch.zeros(*kv_indices.shape[:-1], nk + 1, dtype=torch.bool, device=kv_indices.device)
    return mask.scatter_(-1, cols, True)[..., :nk]


def expand_block_mask(block_mask: Tensor, block_size: int, lq: int, lk: int) -> Tensor:
    """[..., nq, nk] block mask -> [..., lq, lk] token mask (partial last blocks cropped)."""
    m = block_mask.repeat_interleave(block_size, dim=-2)[..., :lq, :]
    return m.repeat_interleave(block_size, dim=-1)[..., :lk]


# --- the reference ---------------------------------------------------------------------------

def reference(q: Tensor, k: Tensor, v: Tensor, kv_counts: Tensor, kv_indices: Tensor,
              block_size: int) -> Tensor:
    """Exact attention restricted to the listed blocks (materialises the token mask). Same
    contract as the op; rows that keep no key get zeros, like the kernel."""
    Lq, Lk = q.shape[1], k.shape[1]
    mask = expand_block_mask(lists_to_block_mask(kv_counts, kv_indices), block_size, Lq, Lk)  # [B, H, Lq, Lk]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask).transpose(1, 2)  # [B, Lq, H, D]; NaN on rows with no key
    has_key = mask.any(-1).transpose(1, 2)[..., None]  # [B, Lq, H, 1]
    return torch.where(has_key, out, torch.zeros((), dtype=out.dtype, device=out.device)).contiguous()


def reference_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, kv_counts: Tensor,
                       kv_indices: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of `reference` for the output gradient `grad` [B, Lq, H, D]: the
    masked softmax-attention backward, computed in float32 (float64 stays float64) and returned
    in the inputs' dtype. Rows that keep no key had zeros out, so they pass no gradient.

    With P = softmax(S) the attention weights of the kept keys (S = q k^T / sqrt(D), masked):
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)), dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D).
    """
    Lq, Lk, D = q.shape[1], k.shape[1], q.shape[3]
    acc = torch.promote_types(q.dtype, torch.float32)
    mask = expand_block_mask(lists_to_block_mask(kv_counts, kv_indices), block_size, Lq, Lk)  # [B, H, Lq, Lk]
    qh, kh, vh, go = (x.transpose(1, 2).to(acc) for x in (q, k, v, grad))  # [B, H, L, D]
    scale = 1.0 / math.sqrt(D)
    scores = (qh @ kh.transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    p = torch.where(mask.any(-1, keepdim=True), p, torch.zeros((), dtype=acc, device=p.device))  # no NaN rows
    dv = p.transpose(-1, -2) @ go  # [B, H, Lk, D]
    dp = go @ vh.transpose(-1, -2)  # [B, H, Lq, Lk]
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = (ds @ kh) * scale  # [B, H, Lq, D]
    dk = (ds.transpose(-1, -2) @ qh) * scale  # [B, H, Lk, D]
    return tuple(g.transpose(1, 2).to(x.dtype).contiguous() for g, x in ((dq, q), (dk, k), (dv, v)))


# --- the kernel ------------------------------------------------------------------------------

@functools.cache
def cupy_or_none():
    """CuPy, or None where it is not installed (the reference is used then)."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def kernel_enabled() -> bool:
    return os.environ.get("STREAMEDIT_DSA_KERNEL", "1") != "0"


def kernel_supports(q: Tensor, block_size: int) -> bool:
    """True where the op runs the CUDA kernel for these inputs (else the reference)."""
    return implementation(q.device, q.dtype, q.shape[-1], block_size) == "cuda-kernel"


def implementation(device: torch.device, dtype: torch.dtype, head_dim: int, block_size: int) -> str:
    """What the op runs for inputs like these: "cuda-kernel" or "torch-reference"."""
    ok = (device.type == "cuda" and dtype == torch.bfloat16 and head_dim in HEAD_DIMS
          and block_size in BLOCK_SIZES and kernel_enabled() and cupy_or_none() is not None
          and _capability(_device_index(device)) >= (8, 0))
    return "cuda-kernel" if ok else "torch-reference"


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)  # bf16 mma.sync and cp.async: sm_80+


@functools.cache
def _module(device_index: int):
    """The compiled kernels of one device: NVRTC through CuPy, cached on disk by CuPy."""
    cupy = cupy_or_none()
    names = [f"dsa::dsa_fwd<{d}, {b}, {r}>" for d, b, r in VARIANTS]
    try:
        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=("-std=c++17",),
                                    name_expressions=names)
            module.compile()
    except Exception as e:  # NVRTC missing or failing, an unsupported driver: say what and how out
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"the DSA CUDA kernel ({KERNEL_SOURCE}) did not build with CuPy "
                           f"{cupy.__version__}: {first}; set STREAMEDIT_DSA_KERNEL=0 to run the "
                           f"torch reference instead") from e
    return module


@functools.cache
def _kernel(device_index: int, head_dim: int, block_size: int, rows: int):
    kernel = _module(device_index).get_function(f"dsa::dsa_fwd<{head_dim}, {block_size}, {rows}>")
    kernel.max_dynamic_shared_size_bytes = _shared_bytes(head_dim, rows)
    return kernel


def _shared_bytes(head_dim: int, rows: int) -> int:
    return (rows + 4 * TILE_N) * head_dim * 2  # Q tile + double-buffered K and V tiles


def rows_per_cta(block_size: int) -> int:
    """Query rows per CTA: the block, unless STREAMEDIT_DSA_ROWS=64 splits blocks of 128."""
    wanted = os.environ.get("STREAMEDIT_DSA_ROWS", "")
    if wanted not in ("", "64", "128"):
        raise ValueError(f"STREAMEDIT_DSA_ROWS must be 64 or 128, got {wanted!r}")
    return int(wanted) if wanted and block_size % int(wanted) == 0 else block_size


_STREAMS: dict[tuple[int, int], object] = {}


def _cupy_stream(stream: torch.cuda.Stream):
    """CuPy's handle on a torch stream (one per stream, kept: creating one costs microseconds)."""
    key = (stream.device_index, stream.cuda_stream)
    if key not in _STREAMS:
        cuda = cupy_or_none().cuda
        _STREAMS[key] = (cuda.Stream.from_external(stream) if hasattr(cuda.Stream, "from_external")
                         else cuda.ExternalStream(stream.cuda_stream, stream.device_index))
    return _STREAMS[key]


def _kernel_ready(x: Tensor) -> Tensor:
    """The kernel moves 16 bytes per copy: last dim contiguous, other strides multiples of 8."""
    if x.stride(-1) == 1 and all(s % 8 == 0 for s in x.stride()[:-1]) and x.data_ptr() % 16 == 0:
        return x
    return x.contiguous()


def launch(q: Tensor, k: Tensor, v: Tensor, kv_counts: Tensor, kv_indices: Tensor,
           block_size: int) -> Tensor:
    """Run the CUDA kernel (inputs as the op's; `kernel_supports(q, block_size)` must hold)."""
    import numpy as np

    B, Lq, H, D = q.shape
    Lk, nq, nk = k.shape[1], kv_counts.shape[-1], kv_indices.shape[-1]
    q, k, v = (_kernel_ready(x) for x in (q, k, v))
    counts = kv_counts.to(torch.int32).contiguous()
    indices = kv_indices.to(torch.int32).contiguous()
    out = torch.empty(B, Lq, H, D, dtype=q.dtype, device=q.device)
    dev = _device_index(q.device)
    i32, i64 = np.int32, np.int64
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), counts.data_ptr(),
            indices.data_ptr(), i32(Lq), i32(Lk), i32(H), i32(nq), i32(nk),
            *(i64(s) for x in (q, k, v, out) for s in (x.stride(0), x.stride(1), x.stride(2))),
            np.float32(math.log2(math.e) / math.sqrt(D)))
    rows = rows_per_cta(block_size)
    kernel = _kernel(dev, D, block_size, rows)
    with _cupy_stream(torch.cuda.current_stream(q.device)):
        kernel((nq * (block_size // rows), H, B), (rows * 2,), args, shared_mem=_shared_bytes(D, rows))
    return out


# --- the op ----------------------------------------------------------------------------------

def check_inputs(q: Tensor, k: Tensor, v: Tensor, kv_counts: Tensor, kv_indices: Tensor,
                 block_size: int) -> None:
    """One clear error for inputs the op cannot take."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[0] != k.shape[0] \
            or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"dsa_attention expects q [B, Lq, H, D] and k, v [B, Lk, H, D]; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if block_size <= 0:
        raise ValueError(f"dsa block_size must be > 0, got {block_size}")
    B, Lq, H, _ = q.shape
    nq, nk = math.ceil(Lq / block_size), math.ceil(k.shape[1] / block_size)
    if tuple(kv_counts.shape) != (B, H, nq) or tuple(kv_indices.shape) != (B, H, nq, nk):
        raise ValueError(f"block lists must be kv_counts [B, H, nq] = {[B, H, nq]} and kv_indices "
                         f"[B, H, nq, nk] = {[B, H, nq, nk]} for blocks of {block_size}; got "
                         f"{list(kv_counts.shape)} and {list(kv_indices.shape)}")
    if kv_counts.dtype.is_floating_point or kv_indices.dtype.is_floating_point:
        raise ValueError(f"block lists must be integer tensors, got {kv_counts.dtype} and {kv_indices.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    devices = {str(x.device) for x in (q, k, v, kv_counts, kv_indices)}
    if len(devices) > 1:
        raise ValueError(f"q, k, v and the block lists must be on one device, got {sorted(devices)}")


@torch.library.custom_op("streamedit::dsa_attention", mutates_args=())
def dsa_attention_op(q: Tensor, k: Tensor, v: Tensor, kv_counts: Tensor, kv_indices: Tensor,
                     block_size: int) -> Tensor:
    check_inputs(q, k, v, kv_counts, kv_indices, block_size)
    if kernel_supports(q, block_size):
        return launch(q, k, v, kv_counts, kv_indices, block_size)
    return reference(q, k, v, kv_counts, kv_indices, block_size)


@dsa_attention_op.register_fake
def _(q, k, v, kv_counts, kv_indices, block_size):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


@torch.library.custom_op("streamedit::dsa_attention_backward", mutates_args=())
def dsa_attention_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, kv_counts: Tensor,
                              kv_indices: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    check_inputs(q, k, v, kv_counts, kv_indices, block_size)
    if grad.shape != q.shape[:3] + v.shape[3:]:
        raise ValueError(f"dsa_attention_backward: grad {tuple(grad.shape)} does not match the output "
                         f"{tuple(q.shape[:3] + v.shape[3:])}")
    return reference_backward(grad, q, k, v, kv_counts, kv_indices, block_size)


@dsa_attention_backward_op.register_fake
def _(grad, q, k, v, kv_counts, kv_indices, block_size):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_backward(ctx, inputs, output) -> None:
    q, k, v, kv_counts, kv_indices, block_size = inputs
    ctx.save_for_backward(q, k, v, kv_counts, kv_indices)
    ctx.block_size = block_size


def _backward(ctx, grad):
    q, k, v, kv_counts, kv_indices = ctx.saved_tensors
    dq, dk, dv = torch.ops.streamedit.dsa_attention_backward(grad.contiguous(), q, k, v, kv_counts,
                                                             kv_indices, ctx.block_size)
    return dq, dk, dv, None, None, None  # the block lists and block_size take no gradient


dsa_attention_op.register_autograd(_backward, setup_context=_setup_backward)
