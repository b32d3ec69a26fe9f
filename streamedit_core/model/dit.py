"""StreamEditDiT: the multi-scale adaptive diffusion transformer that predicts the velocity.

Reads top-down: embeddings -> block (PTCM inside) -> model. After DiT
(https://github.com/facebookresearch/DiT, adaLN-zero, initialisation rules), U-ViT's long skips
(https://arxiv.org/abs/2209.12152), and StreamDiT / StreamEdit-DiT for one timestep per frame.

Layout inside the model: tokens `[B, T, N, D]` (batch, latent frames of the window, tokens per
frame, width). A window holds clean history frames (t == 0) followed by in-flight frames at
their own noise levels, so every modulation is per frame: `[B, T, D]` broadcast over the N tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import attention as attention_fn
from .attention import sdpa
from ..config import ATTENTION_BACKENDS, DiTConfig
from ..types import TextEmbedding

NUM_TEXT_REGISTERS = 4  # learned text tokens that are always attended: the null prompt stays defined
TEXT_POOL_SCORE_DIM = 64  # hidden width of the "attention" text pooling's per-token score


# --- Embeddings -----------------------------------------------------------------------------

def sincos_1d(pos: Tensor, dim: int) -> Tensor:
    """Sin-cos embedding of (possibly fractional) positions: [...] -> [..., dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    args = pos.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def sincos_2d(gh: int, gw: int, dim: int, device: torch.device) -> Tensor:
    """Size-free spatial position of a gh x gw token grid: [gh * gw, dim] float32 (half rows, half cols)."""
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim - dim // 2)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] -> [..., D]: sin-cos of 1000 * t, then a 2-layer MLP (as in DiT)."""

    def __init__(self, hidden: int, freq_dim: int = 256, device=None, dtype=None, operations=None) -> None:
        super().__init__()
        ops = operations or nn
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(ops.Linear(freq_dim, hidden, device=device, dtype=dtype), nn.SiLU(),
                                 ops.Linear(hidden, hidden, device=device, dtype=dtype))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sincos_1d(1000.0 * t, self.freq_dim).to(self.mlp[0].weight.dtype))


def attention_pool(score: nn.Module, states: Tensor, mask: Tensor) -> Tensor:
    """states [B, L, d], mask [B, L] bool -> [B, d]: the states weighted by softmax(score(state))
    over the real tokens; zeros for a row without any (the null prompt)."""
    logits = score(states).squeeze(-1)  # [B, L]; bf16 under autocast even for fp32 states
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, dim=-1) * mask  # an all-padding row: uniform * 0 = 0
    return (weights.unsqueeze(-1) * states).sum(1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [B, T, N, D], shift/scale [B, T, D] (one per frame) -> x * (1 + scale) + shift."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


# --- Block ----------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention projections (q, kv, out); the attention itself is the caller's."""

    def __init__(self, hidden: int, heads: int, device=None, dtype=None, operations=None) -> None:
        super().__init__()
        ops = operations or nn
        self.heads = heads
        self.q = ops.Linear(hidden, hidden, device=device, dtype=dtype)
        self.kv = ops.Linear(hidden, 2 * hidden, device=device, dtype=dtype)
        self.out = ops.Linear(hidden, hidden, device=device, dtype=dtype)

    def qkv(self, x: Tensor, kv_from: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, D] (keys/values from kv_from [B, S, D] if given) -> q [B, L, H, d], k, v [B, S, H, d]."""
        src = x if kv_from is None else kv_from
        q = self.q(x).unflatten(-1, (self.heads, -1))
        k, v = self.kv(src).unflatten(-1, (2, self.heads, -1)).unbind(-3)
        return q, k, v


class StreamEditBlock(nn.Module):
    """One DiT block over a window; four adaLN-zero sections, each modulated per frame."""

    def __init__(self, cfg: DiTConfig, device=None, dtype=None, operations=None) -> None:
        super().__init__()
        ops = operations or nn
        D, kw = cfg.hidden_size, dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.norm = nn.ModuleList(ops.LayerNorm(D, elementwise_affine=False, eps=1e-6, **kw) for _ in range(4))
        self.self_attn = Attention(D, cfg.num_heads, operations=ops, **kw)
        self.temporal_attn = Attention(D, cfg.num_heads, operations=ops, **kw)
        self.history_norm = ops.LayerNorm(D, elementwise_affine=False, eps=1e-6, **kw)
        self.history_proj = ops.Linear(D, D, **kw)
        self.history_gate = nn.Parameter(torch.zeros(D, **kw))  # tanh(0) = 0: fusion starts off
        self.cross_attn = Attention(D, cfg.num_heads, operations=ops, **kw)
        mlp_hidden = int(D * cfg.mlp_ratio)
        self.mlp = nn.Sequential(ops.Linear(D, mlp_hidden, **kw), nn.GELU(approximate="tanh"),
                                 ops.Linear(mlp_hidden, D, **kw))
        # shift, scale, gate for each of the 4 sections, per frame.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(D, 12 * D, **kw))

    def forward(self, h: Tensor, c: Tensor, history: Tensor, text: Tensor, text_mask: Tensor,
                backend: str) -> Tensor:
        """h [B, T, N, D] tokens; c [B, T, D] per-frame conditioning; history [B, T] float, 1 for
        clean history frames; text [B, S, D] with text_mask [B, S] bool; backend: self-attention."""
        B, T, N, D = h.shape
        mods = self.adaLN_modulation(c).chunk(12, dim=-1)  # 12 x [B, T, D]

        # 1. Spatial-temporal self-attention over all T * N tokens of the window.
        x = modulate(self.norm[0](h), mods[0], mods[1]).reshape(B, T * N, D)
        q, k, v = self.self_attn.qkv(x)
        a = attention_fn(q, k, v, backend, frame_tokens=N, window_frames=self.cfg.window_frames,
                         block_size=self.cfg.dsa_block_size, density=self.cfg.dsa_density)
        h = h + mods[2][:, :, None] * self.self_attn.out(a.flatten(2)).reshape(B, T, N, D)

        # 2. PTCM: temporal attention across the T frames at every token position ...
        x = modulate(self.norm[1](h), mods[3], mods[4]).transpose(1, 2).reshape(B * N, T, D)
        q, k, v = self.temporal_attn.qkv(x)
        a = self.temporal_attn.out(sdpa(q, k, v).flatten(2)).reshape(B, N, T, D).transpose(1, 2)
        h = h + mods[5][:, :, None] * a
        # ... then gated fusion of the history frames' mean feature into the in-flight frames.
        w = history[:, :, None, None]  # [B, T, 1, 1]
        hist_mean = (h * w).sum(1) / w.sum(1).clamp(min=1.0)  # [B, N, D]; zeros without history
        fused = self.history_proj(self.history_norm(hist_mean)) * (w.sum(1) > 0).to(h.dtype)
        h = h + (1 - w) * torch.tanh(self.history_gate) * fused[:, None]

        # 3. Cross-attention to the text tokens (padding masked; registers always visible).
        x = modulate(self.norm[2](h), mods[6], mods[7]).reshape(B, T * N, D)
        q, k, v = self.cross_attn.qkv(x, kv_from=text)
        a = sdpa(q, k, v, text_mask[:, None, None, :])  # [B, T*N, H, d]
        h = h + mods[8][:, :, None] * self.cross_attn.out(a.flatten(2)).reshape(B, T, N, D)

        # 4. MLP.
        h = h + mods[11][:, :, None] * self.mlp(modulate(self.norm[3](h), mods[9], mods[10]))
        return h


# --- Model ----------------------------------------------------------------------------------

class StreamEditDiT(nn.Module):
    """Velocity predictor over a window of latent frames; see `forward`."""

    def __init__(self, cfg: DiTConfig, device=None, dtype=None, operations=None) -> None:
        super().__init__()
        ops = operations or nn
        D, p, C, kw = cfg.hidden_size, cfg.patch_size, cfg.latent_channels, dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.patch_embed = ops.Linear(2 * C * p * p, D, **kw)  # noisy latents and source, channel-concat
        self.temporal_pos = nn.Parameter(torch.zeros(cfg.max_frames, D, **kw))
        self.t_embedder = TimestepEmbedder(D, operations=ops, **kw)
        self.text_proj = nn.ModuleList(ops.Linear(m.dim, D, **kw) for m in cfg.text_members)
        self.text_type = nn.Parameter(torch.zeros(len(cfg.text_members), D, **kw))
        self.text_registers = nn.Parameter(torch.zeros(NUM_TEXT_REGISTERS, D, **kw))
        # Pooled text joins the timestep in every modulation (as SD3's pooled CLIP vector): a global
        # edit (a colour map, a blur) is then one direct shift/scale per channel, and the prompt
        # need not be found again by cross-attention in every block.
        self.text_pool = nn.ModuleList(
            nn.Sequential(ops.Linear(m.dim, D, **kw), nn.SiLU(), ops.Linear(D, D, **kw))
            for m in cfg.text_members)
        # cfg.text_pooling "attention": a score per token of each member, softmaxed over its real tokens.
        self.text_pool_score = (nn.ModuleList(
            nn.Sequential(ops.Linear(m.dim, TEXT_POOL_SCORE_DIM, **kw), nn.Tanh(),
                          ops.Linear(TEXT_POOL_SCORE_DIM, 1, **kw))
            for m in cfg.text_members) if cfg.text_pooling == "attention" else None)

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(StreamEditBlock(cfg, operations=ops, **kw) for _ in range(n))

        self.outer_in = blocks(cfg.depth_outer)
        self.merge = ops.Linear(4 * D, D, **kw)  # 2x2 tokens -> 1
        self.inner = blocks(cfg.depth_inner)
        self.unmerge = ops.Linear(D, 4 * D, **kw)
        self.outer_out = blocks(cfg.depth_outer)
        self.skip_proj = nn.ModuleList(ops.Linear(2 * D, D, **kw) for _ in range(cfg.depth_outer))
        self.final_norm = ops.LayerNorm(D, elementwise_affine=False, eps=1e-6, **kw)
        self.final_modulation = nn.Sequential(nn.SiLU(), ops.Linear(D, 2 * D, **kw))
        self.final_linear = ops.Linear(D, C * p * p, **kw)
        K = C * p * p
        M = (cfg.edit_map_channels or C) * p * p  # patch values the full map reads (leading channels)
        # The prompt's linear edit map (cfg.edit_map_rank): pooled text -> coefficients over a
        # learned basis of M x M matrices (+ biases), and a scale and a bias for each of the other
        # K - M values; see DiTConfig.edit_map_rank and edit_map_channels.
        self.edit_map = (nn.Sequential(ops.Linear(D, cfg.edit_map_rank, **kw),
                                       ops.Linear(cfg.edit_map_rank, M * M + M + 2 * (K - M), **kw))
                         if cfg.edit_map_rank else None)
        self.edit_map_values = M
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's rules (run explicitly: injected `operations` may skip their own init)."""
        # Every linear: xavier-uniform, zero bias (transformer default in DiT).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Timestep MLP and the learned tables: small normal, as DiT's embedders.
        pool_layers = [layer for mlp in self.text_pool for layer in (mlp[0], mlp[2])]
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], *pool_layers):
            nn.init.normal_(layer.weight, std=0.02)
        for table in (self.temporal_pos, self.text_type, self.text_registers):
            nn.init.normal_(table, std=0.02)
        # adaLN-zero: every modulation starts at zero, so each block starts as the identity.
        for block in (*self.outer_in, *self.inner, *self.outer_out):
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_modulation[-1].weight)
        nn.init.zeros_(self.final_modulation[-1].bias)
        # Zero output layer: the untrained model predicts zero velocity.
        nn.init.zeros_(self.final_linear.weight)
        nn.init.zeros_(self.final_linear.bias)
        if self.edit_map is not None:  # the untrained map is zero: x0 = source
            nn.init.zeros_(self.edit_map[-1].weight)
            nn.init.zeros_(self.edit_map[-1].bias)

    # -- input checks and embeddings --

    def _check_inputs(self, x: Tensor, t: Tensor, cond: Tensor, text: TextEmbedding) -> None:
        cfg, p = self.cfg, self.cfg.patch_size
        if x.dim() != 5 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be latents [B, {cfg.latent_channels}, T, h, w], got {tuple(x.shape)}")
        if cond.shape != x.shape:
            raise ValueError(f"cond must have the shape of x {tuple(x.shape)}, got {tuple(cond.shape)}")
        B, _, T, h, w = x.shape
        if t.shape != (B, T):
            raise ValueError(f"t must be [B, T] = [{B}, {T}] (one noise level per latent frame), "
                             f"got {tuple(t.shape)}")
        if T > cfg.max_frames:
            raise ValueError(f"window of {T} latent frames exceeds max_frames={cfg.max_frames}")
        if len(text.states) != len(cfg.text_members) or len(text.masks) != len(cfg.text_members):
            raise ValueError(f"text has {len(text.states)} members, the model expects "
                             f"{len(cfg.text_members)} ({[m.kind for m in cfg.text_members]})")
        for i, (s, m, member) in enumerate(zip(text.states, text.masks, cfg.text_members)):
            if s.dim() != 3 or s.shape[0] != B or s.shape[2] != member.dim:
                raise ValueError(f"text member {i} ({member.kind}): states must be [{B}, L, {member.dim}], "
                                 f"got {tuple(s.shape)}")
            if m.shape != s.shape[:2] or m.dtype != torch.bool:
                raise ValueError(f"text member {i} ({member.kind}): mask must be bool {tuple(s.shape[:2])}, "
                                 f"got {m.dtype} {tuple(m.shape)}")

    def embed_text(self, text: TextEmbedding) -> tuple[Tensor, Tensor]:
        """Project every member to D, add its type embedding, concatenate, prepend the registers.
        Returns tokens [B, R + sum L_i, D] and mask [B, R + sum L_i] bool (registers always True)."""
        B = text.batch_size
        device = self.text_registers.device
        tokens = [self.text_registers.expand(B, -1, -1)]
        masks = [torch.ones(B, NUM_TEXT_REGISTERS, dtype=torch.bool, device=device)]
        for i, (proj, s, m) in enumerate(zip(self.text_proj, text.states, text.masks)):
            tokens.append(proj(s.to(device=device, dtype=proj.weight.dtype)) + self.text_type[i])
            masks.append(m.to(device))
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def pool_text(self, text: TextEmbedding) -> Tensor:
        """Each member's pooled real tokens (cfg.text_pooling; zeros for the null prompt) through
        its MLP, summed: [B, D], added to every frame's timestep embedding."""
        text = text.to(self.text_registers.device, self.text_registers.dtype)
        if self.text_pool_score is None:
            pooled = text.token_means()
        else:
            pooled = tuple(attention_pool(score, s, m)
                           for score, s, m in zip(self.text_pool_score, text.states, text.masks))
        return sum(mlp(p) for mlp, p in zip(self.text_pool, pooled))

    def _edit_map(self, pooled: Tensor, source: Tensor) -> Tensor:
        """The prompt's linear map of the source patches: pooled [B, D], source [B, T, N, K] ->
        [B, T, N, K]: A(prompt) @ source + b(prompt) on the leading M values, and
        scale(prompt) * source + bias(prompt) per value on the rest (cfg.edit_map_channels)."""
        B, K, M = source.shape[0], source.shape[-1], self.edit_map_values
        # Unit-RMS input: the pooled text starts tiny (its MLP's small init), and the map's
        # learning rate should not wait for it to grow.
        ab = self.edit_map(F.layer_norm(pooled.to(source.dtype), pooled.shape[-1:]))  # [B, M*M + M + 2(K-M)]
        A, b = ab[:, :M * M].view(B, 1, M, M), ab[:, M * M:M * M + M].view(B, 1, 1, M)
        out = torch.matmul(source[..., :M], A.transpose(-1, -2)) + b  # [B, T, N, M]
        if M == K:
            return out
        scale, bias = ab[:, M * M + M:].view(B, 2, 1, 1, K - M).unbind(1)  # each [B, 1, 1, K-M]
        return torch.cat([out, source[..., M:] * scale + bias], dim=-1)

    def edit_map_residual(self, cond: Tensor, text: TextEmbedding) -> Tensor:
        """The edit map's part of the x0 residual alone (no transformer): cond [B, C, T, h, w]
        (the source latents, h and w multiples of the patch size) -> [B, C, T, h, w]. What
        `train.trainer.Trainer.fit_edit_map` fits before the DiT trains."""
        if self.edit_map is None:
            raise ValueError("this DiT has no edit map (edit_map_rank = 0)")
        h, w = cond.shape[-2:]
        source = self._patchify(cond.to(self.patch_embed.weight.dtype))  # [B, T, N, K]
        return self._unpatchify(self._edit_map(self.pool_text(text), source), h, w)

    def _patchify(self, x: Tensor) -> Tensor:
        """[B, C, T, h, w] -> [B, T, N, C*p*p] with N = (h/p) * (w/p), row-major over the grid."""
        B, C, T, h, w = x.shape
        p = self.cfg.patch_size
        x = x.reshape(B, C, T, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6)  # [B, T, gh, gw, C, p, p]
        return x.reshape(B, T, (h // p) * (w // p), C * p * p)

    def _unpatchify(self, y: Tensor, h: int, w: int) -> Tensor:
        """[B, T, N, C*p*p] -> [B, C, T, h, w]."""
        B, T = y.shape[:2]
        p, C = self.cfg.patch_size, self.cfg.latent_channels
        y = y.reshape(B, T, h // p, w // p, C, p, p).permute(0, 4, 1, 2, 5, 3, 6)  # [B, C, T, gh, p, gw, p]
        return y.reshape(B, C, T, h, w)

    @staticmethod
    def _merge_layout(h: Tensor, gh: int, gw: int) -> Tensor:
        """[B, T, gh*gw, D] -> [B, T, gh/2*gw/2, 4*D]: each 2x2 group of tokens side by side."""
        B, T, _, D = h.shape
        h = h.reshape(B, T, gh // 2, 2, gw // 2, 2, D).permute(0, 1, 2, 4, 3, 5, 6)
        return h.reshape(B, T, (gh // 2) * (gw // 2), 4 * D)

    @staticmethod
    def _unmerge_layout(h: Tensor, gh: int, gw: int) -> Tensor:
        """Inverse of `_merge_layout`: [B, T, gh/2*gw/2, 4*D] -> [B, T, gh*gw, D]."""
        B, T, _, D4 = h.shape
        h = h.reshape(B, T, gh // 2, gw // 2, 2, 2, D4 // 4).permute(0, 1, 2, 4, 3, 5, 6)
        return h.reshape(B, T, gh * gw, D4 // 4)

    def _run(self, block: StreamEditBlock, h: Tensor, *args) -> Tensor:
        if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, *args, use_reentrant=False)
        return block(h, *args)

    # -- forward --

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, text: TextEmbedding,
                attention: str | None = None) -> Tensor:
        """Predict the velocity v = eps - x0 for every frame of the window (with
        cfg.prediction "source_residual", through x0 = cond + the output layer's residual).

        x     [B, 12, T, h, w] the window (12 = latent_channels): clean history frames (t == 0),
              then in-flight frames
        t     [B, T] float noise level in [0, 1] of each latent frame
        cond  [B, 12, T, h, w] the source video's latents for the same frames
        text  TextEmbedding with batch B (all-False masks = the null prompt)
        attention: self-attention backend for this call (default cfg.attention)
        Returns the velocity [B, 12, T, h, w] in x's dtype.
        """
        self._check_inputs(x, t, cond, text)
        backend = self.cfg.attention if attention is None else attention
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}")
        T, h, w = x.shape[2:]
        # Any latent size works: the grid is padded (edge-replicated) to a multiple of 2 patches,
        # which the patching and the 2x2 merge need, and the output is cropped back. Users then
        # only need frames that are a multiple of the STLE's 8 pixels.
        m = 2 * self.cfg.patch_size
        ph, pw = -h % m, -w % m
        xc = torch.cat([x, cond], dim=1)  # [B, 2C, T, h, w]
        if ph or pw:
            xc = F.pad(xc, (0, pw, 0, ph, 0, 0), mode="replicate")
        gh, gw = (h + ph) // self.cfg.patch_size, (w + pw) // self.cfg.patch_size
        dtype = self.patch_embed.weight.dtype

        # Tokens: patches of [x, cond] + spatial (size-free) + temporal (window slot) position.
        tokens = self._patchify(xc.to(dtype))  # [B, T, N, 2*C*p*p]
        pos = sincos_2d(gh, gw, self.cfg.hidden_size, x.device).to(dtype)  # [N, D]
        hs = self.patch_embed(tokens) + pos + self.temporal_pos[:T, None]  # [B, T, N, D]
        pooled = self.pool_text(text)  # [B, D]
        c = self.t_embedder(t) + pooled[:, None]  # [B, T, D]
        history = (t == 0).to(dtype)  # [B, T]; tensor op, no host sync
        text_tokens, text_mask = self.embed_text(text)

        args = (c, history, text_tokens, text_mask, backend)

        # Full resolution, first half: keep each output for the U-Net-style skips.
        skips = []
        for block in self.outer_in:
            hs = self._run(block, hs, *args)
            skips.append(hs)
        # Middle: 2x2-merged tokens (4x fewer), back up with a skip from before the merge.
        pre_merge = hs
        hs = self.merge(self._merge_layout(hs, gh, gw))  # [B, T, N/4, D]
        for block in self.inner:
            hs = self._run(block, hs, *args)
        hs = pre_merge + self._unmerge_layout(self.unmerge(hs), gh, gw)  # [B, T, N, D]
        # Full resolution, second half: concat the mirrored first-half output, project back to D.
        for block, proj in zip(self.outer_out, self.skip_proj):
            hs = proj(torch.cat([hs, skips.pop()], dim=-1))
            hs = self._run(block, hs, *args)

        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        out = self.final_linear(modulate(self.final_norm(hs), shift, scale))  # [B, T, N, C*p*p]
        if self.edit_map is not None:
            out = out + self._edit_map(pooled, tokens[..., out.shape[-1]:])  # of the source patches
        out = self._unpatchify(out, h + ph, w + pw)[..., :h, :w]  # [B, C, T, h, w]
        if self.cfg.prediction == "source_residual":
            # x0 = source + residual; v = (x_t - x0) / t, in fp32 (a division by a small t).
            # History frames (t == 0) get v = 0: they do not move, and must not blow up.
            tt = t.float()[:, None, :, None, None]  # [B, 1, T, 1, 1]
            v = (x.float() - cond.float() - out.float()) / tt.clamp(min=1e-3)
            out = torch.where(tt > 0, v, torch.zeros_like(v))
        return out.to(x.dtype)
