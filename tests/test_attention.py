"""Attention backends: window == dense with the frame mask, dsa at density 1 == dense, the DSA
mask rule's invariants, CSR round trip, bad inputs."""
import math

import pytest
import torch

from streamedit_core.model.attention import attention, dsa_block_mask, window_frame_mask
from streamedit_core.model.dsa import block_lists, expand_block_mask, lists_to_block_mask


def _qkv(B=2, L=40, H=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, L, H, D, generator=g, dtype=torch.float64) for _ in range(3))


def _dense_masked(q, k, v, mask):
    """Plain softmax attention with an explicit bool mask [Lq, Lk] or [B, H, Lq, Lk]: the reference."""
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def test_dense_matches_plain_softmax():
    q, k, v = _qkv()
    full = torch.ones(40, 40, dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v, "dense", frame_tokens=8), _dense_masked(q, k, v, full))


@pytest.mark.parametrize("frames,frame_tokens,window", [(5, 8, 2), (5, 8, 0), (3, 7, 4), (1, 6, 2)])
def test_window_equals_dense_with_frame_mask(frames, frame_tokens, window):
    q, k, v = _qkv(L=frames * frame_tokens)
    mask = window_frame_mask(frames, frame_tokens, window)
    out = attention(q, k, v, "window", frame_tokens=frame_tokens, window_frames=window)
    torch.testing.assert_close(out, _dense_masked(q, k, v, mask))


def test_window_frame_mask_rule():
    m = window_frame_mask(4, 1, 1)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


@pytest.mark.parametrize("L,block", [(40, 8), (37, 8), (40, 64)])
def test_dsa_full_density_equals_dense(L, block):
    q, k, v = _qkv(L=L)
    out = attention(q, k, v, "dsa", frame_tokens=8, block_size=block, density=1.0)
    torch.testing.assert_close(out, attention(q, k, v, "dense", frame_tokens=8))


def test_dsa_attention_is_dense_restricted_to_its_mask():
    q, k, v = _qkv(L=45, seed=3)
    bm = dsa_block_mask(q, k, block_size=4, density=0.3, frame_tokens=9)
    out = attention(q, k, v, "dsa", frame_tokens=9, block_size=4, density=0.3)
    torch.testing.assert_close(out, _dense_masked(q, k, v, expand_block_mask(bm, 4, 45, 45)))
    assert not bm.all(), "density 0.3 should drop some blocks"


def test_dsa_mask_invariants():
    # 64 tokens, frames of 16 tokens, blocks of 4 -> 16 blocks, 4 per frame.
    q, k, _ = _qkv(L=64, seed=1)
    bm = dsa_block_mask(q, k, block_size=4, density=0.5, frame_tokens=16)
    assert bm.shape == (2, 2, 16, 16)
    blocks = torch.arange(16)
    assert bm[..., blocks, blocks].all(), "the diagonal block is always kept"
    same_frame = (blocks[:, None] // 4) == (blocks[None, :] // 4)
    assert bm[..., same_frame].all(), "blocks of the query's own frame are always kept"
    # 4 forced blocks per row <= k = ceil(0.5 * 16) = 8: exactly k per row.
    assert (bm.sum(-1) == 8).all()
    # The free choices are the top-scoring blocks among the non-forced ones.
    pooled_q = q.reshape(2, 16, 4, 2, 8).mean(2).transpose(1, 2)
    pooled_k = k.reshape(2, 16, 4, 2, 8).mean(2).transpose(1, 2)
    scores = (pooled_q @ pooled_k.transpose(-1, -2)).masked_fill(same_frame, float("-inf"))
    top4 = scores.topk(4, dim=-1).indices
    assert bm.gather(-1, top4).all()


def test_dsa_forced_blocks_exceeding_k_are_all_kept():
    q, k, _ = _qkv(L=64, seed=2)
    bm = dsa_block_mask(q, k, block_size=4, density=0.1, frame_tokens=32)  # k = 2, 8 forced per row
    assert (bm.sum(-1) == 8).all()


def test_dsa_partial_last_block_and_frames_crossing_blocks():
    # 37 tokens in blocks of 8 -> 5 blocks, the last holds 5 tokens; frames of 6 tokens cross blocks.
    q, k, _ = _qkv(L=37, seed=4)
    bm = dsa_block_mask(q, k, block_size=8, density=0.2, frame_tokens=6)  # k = 1
    assert bm.shape == (2, 2, 5, 5)
    assert bm[..., torch.arange(5), torch.arange(5)].all()
    # block 1 = tokens 8..15 = frames 1..2; block 0 (frames 0..1) and block 2 (tokens 16..23,
    # frames 2..3) share a frame with it.
    assert bm[..., 1, 0].all() and bm[..., 1, 2].all()
    # The partial block 4 (tokens 32..36) is pooled over its 5 real tokens: give block 3 keys at
    # 0.8 x and block 4 keys at 1.0 x block 0's pooled query. Row 0 forces blocks 0, 1; with
    # k = 3 the one free pick must be block 4 (a mean over 8 slots would score it 5/8 < 0.8).
    pq0 = q[:, 0:8].mean(1)  # [B, H, D]
    k2 = k.clone()
    k2[:, 16:24] = 0
    k2[:, 24:32] = 0.8 * pq0[:, None]
    k2[:, 32:37] = pq0[:, None]
    bm2 = dsa_block_mask(q, k2, block_size=8, density=0.6, frame_tokens=6)
    assert bm2[..., 0, 4].all() and not bm2[..., 0, 3].any() and (bm2[..., 0, :].sum(-1) == 3).all()


def test_dsa_global_kv_blocks_always_kept():
    q, k, _ = _qkv(L=48, seed=5)
    glob = torch.zeros(48, dtype=torch.bool)
    glob[44:] = True  # e.g. text tokens appended to the sequence
    bm = dsa_block_mask(q, k, block_size=8, density=0.2, frame_tokens=8, global_kv=glob)
    assert bm[..., :, 5].all()


def test_dsa_joint_sequence_with_more_keys_than_queries():
    # Video queries (40 tokens) over video + appended text keys (8 global tokens).
    q, _, _ = _qkv(L=40, seed=7)
    _, k, v = _qkv(L=48, seed=8)
    glob = torch.arange(48) >= 40
    full = attention(q, k, v, "dsa", frame_tokens=8, block_size=8, density=1.0, global_kv=glob)
    torch.testing.assert_close(full, _dense_masked(q, k, v, torch.ones(40, 48, dtype=torch.bool)))
    bm = dsa_block_mask(q, k, block_size=8, density=0.2, frame_tokens=8, global_kv=glob)
    assert bm.shape == (2, 2, 5, 6) and bm[..., 5].all()


def test_block_lists_round_trip():
    q, k, _ = _qkv(L=37, seed=6)
    bm = dsa_block_mask(q, k, block_size=4, density=0.3, frame_tokens=10)
    counts, indices = block_lists(bm)
    assert counts.dtype == torch.int32 and indices.dtype == torch.int32
    assert counts.shape == (2, 2, 10) and indices.shape == (2, 2, 10, 10)
    assert torch.equal(counts, bm.sum(-1, dtype=torch.int32))
    for row, n, m in zip(indices.reshape(-1, 10), counts.flatten(), bm.reshape(-1, 10)):
        kept = row[:n]
        assert torch.all(kept[1:] > kept[:-1]), "kept blocks ascend within a row"
        assert torch.equal(kept.long(), m.nonzero().flatten())
    assert torch.equal(lists_to_block_mask(counts, indices), bm)
    empty = torch.zeros(3, 5, dtype=torch.bool)
    assert torch.equal(lists_to_block_mask(*block_lists(empty)), empty)


def test_bad_inputs():
    q, k, v = _qkv(L=40)
    with pytest.raises(ValueError, match="'sparse'"):
        attention(q, k, v, "sparse", frame_tokens=8)
    with pytest.raises(ValueError, match="frame_tokens=7"):
        attention(q, k, v, "window", frame_tokens=7)
    with pytest.raises(ValueError, match="density must be in \\(0, 1\\], got 1.5"):
        dsa_block_mask(q, k, block_size=8, density=1.5, frame_tokens=8)
    with pytest.raises(ValueError, match="block_size must be > 0, got 0"):
        dsa_block_mask(q, k, block_size=0, density=0.5, frame_tokens=8)
    with pytest.raises(ValueError, match=r"\[40\] bool mask, got \(39,\)"):
        dsa_block_mask(q, k, block_size=8, density=0.5, frame_tokens=8, global_kv=torch.ones(39, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"q \(2, 40, 2, 8\), k \(2, 40, 3, 8\)"):
        attention(q, k[:, :, :1].repeat(1, 1, 3, 1), v[:, :, :1].repeat(1, 1, 3, 1), "dense", frame_tokens=8)
