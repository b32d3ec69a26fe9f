"""StreamEditDiT: shapes, conditioning that matters (per-frame t, text, history), backends,
gradient checkpointing, a tiny training sanity check, and the input checks."""
import dataclasses
import types

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from streamedit_core.model import dit
from streamedit_core.config import PRESETS
from streamedit_core.model.dit import StreamEditDiT
from streamedit_core.types import TextEmbedding

CFG = PRESETS["tiny"].dit


def _model(cfg=CFG, seed=0, perturb=0.05):
    """A tiny DiT whose zero-initialised layers (adaLN, gates, output) are perturbed, so every
    path contributes to the output (the freshly initialised model outputs exactly zero)."""
    torch.manual_seed(seed)
    model = StreamEditDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    return model.eval()


def _inputs(B=2, T=4, h=4, w=4, seed=0, text_len=16, real_tokens=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 12, T, h, w, generator=g)
    cond = torch.randn(B, 12, T, h, w, generator=g)
    t = torch.rand(B, T, generator=g)
    t[:, 0] = 0.0  # one clean history frame
    states = torch.randn(B, text_len, 384, generator=g)
    mask = torch.arange(text_len)[None].expand(B, -1) < real_tokens
    return x, t, cond, TextEmbedding((states,), (mask,))


def test_fresh_model_predicts_zero_velocity_with_the_right_shape():
    model = StreamEditDiT(CFG)
    x, t, cond, text = _inputs()
    v = model(x, t, cond, text)
    assert v.shape == x.shape and v.dtype == x.dtype
    assert torch.count_nonzero(v) == 0  # zero-initialised output layer


@pytest.mark.parametrize("backend", ["dense", "window", "dsa"])
@pytest.mark.parametrize("size", [(4, 4), (8, 4)])
def test_output_shape_every_backend_and_size(backend, size):
    model = _model()
    x, t, cond, text = _inputs(h=size[0], w=size[1])
    v = model(x, t, cond, text, attention=backend)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_null_prompt_is_finite_and_ignores_padding():
    model = _model()
    x, t, cond, text = _inputs()
    null = TextEmbedding(text.states, (torch.zeros_like(text.masks[0]),))
    v_null = model(x, t, cond, null)
    assert torch.isfinite(v_null).all()
    assert not torch.allclose(v_null, model(x, t, cond, text)), "the prompt must matter"
    # Masked (padded) token states must not matter.
    states = text.states[0].clone()
    states[:, 5:] = 1e3 * torch.randn_like(states[:, 5:])
    v_pad = model(x, t, cond, TextEmbedding((states,), text.masks))
    torch.testing.assert_close(v_pad, model(x, t, cond, text))


def test_pooled_prompt_modulates_every_block():
    # With cross-attention silenced, the prompt still reaches the output through its pooled
    # vector in the modulation; silencing that too leaves the prompt no way in.
    model = _model()
    x, t, cond, text = _inputs()
    other = TextEmbedding((torch.randn_like(text.states[0]),), text.masks)
    with torch.no_grad():
        for block in (*model.outer_in, *model.inner, *model.outer_out):
            nn.init.zeros_(block.cross_attn.out.weight)
            nn.init.zeros_(block.cross_attn.out.bias)
    assert not torch.allclose(model(x, t, cond, text), model(x, t, cond, other))
    with torch.no_grad():
        nn.init.zeros_(model.text_pool[0][2].weight)
    torch.testing.assert_close(model(x, t, cond, text), model(x, t, cond, other))
    # The null prompt pools to zeros: its vector is the MLP's response to nothing, not to padding.
    null = TextEmbedding(text.states, (torch.zeros_like(text.masks[0]),))
    mlp = model.text_pool[0]
    torch.testing.assert_close(model.pool_text(null), mlp(torch.zeros(2, 384)))


def test_attention_pooling_weights_the_real_tokens_by_their_scores():
    model = _model(dataclasses.replace(CFG, text_pooling="attention"))
    x, t, cond, text = _inputs()
    states, mask = text.states[0], text.masks[0]
    score, mlp = model.text_pool_score[0], model.text_pool[0]
    # by hand: softmax of the scores over the 5 real tokens
    w = torch.softmax(score(states[:, :5]).squeeze(-1), dim=-1)  # [B, 5]
    torch.testing.assert_close(model.pool_text(text), mlp((w[..., None] * states[:, :5]).sum(1)))
    # the null prompt pools to zeros, and padding never counts
    null = TextEmbedding(text.states, (torch.zeros_like(mask),))
    torch.testing.assert_close(model.pool_text(null), mlp(torch.zeros(2, 384)))
    padded = states.clone()
    padded[:, 5:] = 1e3 * torch.randn_like(padded[:, 5:])
    torch.testing.assert_close(model(x, t, cond, TextEmbedding((padded,), text.masks)), model(x, t, cond, text))
    # a token whose score dominates is what the pooled vector reads
    with torch.no_grad():
        score[-1].weight.zero_()
        score[-1].bias.zero_()
        score[-1].weight[0, 0] = 1e4
    picked = states.clone()
    picked[:, 2, 0] = 10.0  # token 2 scores highest through hidden unit 0 (tanh saturates ~ 1)
    with torch.no_grad():
        score[0].weight.zero_()
        score[0].bias.zero_()
        score[0].weight[0, 0] = 1.0
    torch.testing.assert_close(model.pool_text(TextEmbedding((picked,), text.masks)), mlp(picked[:, 2]))
    assert model.text_pool_score is not None and _model().text_pool_score is None  # "mean": none
    with pytest.raises(ValueError, match="unknown text pooling 'max'"):
        dataclasses.replace(PRESETS["tiny"], dit=dataclasses.replace(CFG, text_pooling="max"))


def test_attention_pooling_runs_under_bf16_autocast():
    # The scores come out bf16 while the states stay fp32: the padding fill must fit bf16.
    model = _model(dataclasses.replace(CFG, text_pooling="attention"))
    x, t, cond, text = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(x, t, cond, text)
    assert torch.isfinite(v.float()).all()
    torch.testing.assert_close(v.float(), model(x, t, cond, text), atol=0.1, rtol=0.1)


def test_source_residual_prediction_starts_as_the_identity_edit():
    # x0 = source + residual: the untrained model's one Euler step from t to 0 lands on the source.
    model = StreamEditDiT(dataclasses.replace(CFG, prediction="source_residual"))
    x, t, cond, text = _inputs()
    v = model(x, t, cond, text)
    x0 = x - t[:, None, :, None, None] * v
    torch.testing.assert_close(x0[:, :, 1:], cond[:, :, 1:])
    assert torch.count_nonzero(v[:, :, 0]) == 0  # history frames (t == 0) do not move
    with pytest.raises(ValueError, match="unknown DiT prediction 'eps'"):
        dataclasses.replace(PRESETS["tiny"], dit=dataclasses.replace(CFG, prediction="eps"))


def test_edit_map_adds_the_prompts_linear_map_of_the_source():
    cfg = dataclasses.replace(CFG, prediction="source_residual", edit_map_rank=4)
    model = StreamEditDiT(cfg)
    x, t, cond, text = _inputs()

    def x0(text):
        return (x - t[:, None, :, None, None] * model(x, t, cond, text))[:, :, 1:]  # in-flight frames

    torch.testing.assert_close(x0(text), cond[:, :, 1:])  # the untrained map is zero
    # A = -0.5 I, b = 0.25 for every prompt (the last layer's bias): x0 = 0.5 source + 0.25,
    # in every position of the 2x2 patches.
    K = 12 * cfg.patch_size ** 2
    with torch.no_grad():
        model.edit_map[-1].bias[:K * K] = (-0.5 * torch.eye(K)).flatten()
        model.edit_map[-1].bias[K * K:] = 0.25
    torch.testing.assert_close(x0(text), 0.5 * cond[:, :, 1:] + 0.25)
    # With weights, the pooled prompt picks the map: another prompt, another x0.
    with torch.no_grad():
        model.edit_map[-1].weight.normal_(std=0.1)
    other = TextEmbedding((torch.randn_like(text.states[0]),), text.masks)
    assert not torch.allclose(x0(text), x0(other), atol=1e-3)
    with pytest.raises(ValueError, match="edit_map_rank=4 must be >= 0, and > 0 only with prediction"):
        dataclasses.replace(PRESETS["tiny"], dit=dataclasses.replace(CFG, edit_map_rank=4))


def test_edit_map_on_leading_channels_scales_the_rest_per_value():
    cfg = dataclasses.replace(CFG, prediction="source_residual", edit_map_rank=4, edit_map_channels=4)
    model = StreamEditDiT(cfg)
    x, t, cond, text = _inputs()
    p2 = cfg.patch_size ** 2
    K, M = cfg.latent_channels * p2, 4 * p2  # patch values: all, and those the full map reads
    assert model.edit_map[-1].out_features == M * M + M + 2 * (K - M)  # not K * K + K
    # Leading 4 channels: A = -0.5 I, b = 0.25; every other value: scale -1, bias 0 (removed).
    with torch.no_grad():
        model.edit_map[-1].bias[:M * M] = (-0.5 * torch.eye(M)).flatten()
        model.edit_map[-1].bias[M * M:M * M + M] = 0.25
        model.edit_map[-1].bias[M * M + M:M * M + K] = -1.0
    x0 = (x - t[:, None, :, None, None] * model(x, t, cond, text))[:, :, 1:]
    torch.testing.assert_close(x0[:, :4], 0.5 * cond[:, :4, 1:] + 0.25)
    torch.testing.assert_close(x0[:, 4:], torch.zeros_like(x0[:, 4:]))
    with pytest.raises(ValueError, match="DiTConfig.edit_map_channels=-1 must be >= 0"):
        dataclasses.replace(cfg, edit_map_channels=-1)
    with pytest.raises(ValueError, match=r"edit_map_channels=13 must be in \[0, latent_channels=12\]"):
        dataclasses.replace(PRESETS["tiny"], dit=dataclasses.replace(cfg, edit_map_channels=13))
    with pytest.raises(ValueError, match="> 0 only with an edit map"):
        dataclasses.replace(PRESETS["tiny"], dit=dataclasses.replace(cfg, edit_map_rank=0))


def test_timestep_of_one_frame_changes_the_output():
    model = _model()
    x, t, cond, text = _inputs()
    v = model(x, t, cond, text)
    t2 = t.clone()
    t2[:, 2] = t2[:, 2] * 0.5 + 0.25
    v2 = model(x, t2, cond, text)
    assert not torch.allclose(v[:, :, 2], v2[:, :, 2])


def test_history_frames_are_fused_through_the_gate():
    # A frame becomes history when its t is 0; the gated fusion then feeds the other frames.
    model = _model()
    x, t, cond, text = _inputs()
    for block in (*model.outer_in, *model.inner, *model.outer_out):
        nn.init.zeros_(block.history_gate)
    v_closed = model(x, t, cond, text)
    for block in (*model.outer_in, *model.inner, *model.outer_out):
        nn.init.constant_(block.history_gate, 0.5)
    v_open = model(x, t, cond, text)
    assert not torch.allclose(v_closed[:, :, 1:], v_open[:, :, 1:])
    # Without history frames (no t == 0) the fusion adds nothing.
    t_none = t.clone()
    t_none[:, 0] = 0.1
    v_open = model(x, t_none, cond, text)
    for block in (*model.outer_in, *model.inner, *model.outer_out):
        nn.init.zeros_(block.history_gate)
    torch.testing.assert_close(model(x, t_none, cond, text), v_open)


def test_batch_rows_are_independent():
    model = _model()
    x, t, cond, text = _inputs(B=2)
    v = model(x, t, cond, text)
    one = TextEmbedding((text.states[0][1:],), (text.masks[0][1:],))
    torch.testing.assert_close(model(x[1:], t[1:], cond[1:], one), v[1:], atol=1e-5, rtol=1e-4)


def test_backends_agree_where_their_masks_are_full():
    # dsa at density 1 is dense attention; so is the (causal) frame window over a single frame.
    cfg = dataclasses.replace(CFG, dsa_density=1.0, dsa_block_size=3)
    model = _model(cfg)
    x, t, cond, text = _inputs(T=4)
    dense = model(x, t, cond, text, attention="dense")
    torch.testing.assert_close(model(x, t, cond, text, attention="dsa"), dense, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(model(x, t, cond, text, attention="window"), dense)
    x1, t1, cond1, text1 = _inputs(T=1)
    torch.testing.assert_close(model(x1, t1, cond1, text1, attention="window"),
                               model(x1, t1, cond1, text1, attention="dense"), atol=1e-5, rtol=1e-4)


def test_dsa_gradients_equal_dense_ones_under_a_full_mask():
    """Issue 49, defect 1: backward through the DSA op (it had no autograd formula). At density 1
    every block is kept, so the DiT's parameter and input gradients are dense attention's."""
    cfg = dataclasses.replace(CFG, dsa_density=1.0, dsa_block_size=3)
    x, t, cond, text = _inputs(T=3)
    grads = {}
    for backend in ("dense", "dsa"):
        model = _model(cfg).train()
        xg = x.clone().requires_grad_()
        model(xg, t, cond, text, attention=backend).square().mean().backward()
        grads[backend] = {"x": xg.grad, **{n: p.grad for n, p in model.named_parameters()}}
    assert grads["dsa"].keys() == grads["dense"].keys()
    for name, g in grads["dense"].items():
        if g is not None:
            torch.testing.assert_close(grads["dsa"][name], g, atol=1e-6, rtol=1e-4, msg=name)
    assert grads["dsa"]["x"].abs().sum() > 0


def _fit_a_fixed_batch(model, steps: int = 8) -> list[float]:
    """AdamW steps of the flow-matching loss on one fixed batch; the losses."""
    x0, t, cond, text = _inputs()
    eps = torch.randn_like(x0)
    tt = t[:, None, :, None, None]
    xt, target = (1 - tt) * x0 + tt * eps, eps - x0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = (model(xt, t, cond, text) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_few_optimizer_steps_reduce_the_loss_with_dsa():
    """The 2b/10b presets train with attention="dsa": a sparse DiT (density 0.5) learns."""
    torch.manual_seed(0)
    model = StreamEditDiT(dataclasses.replace(CFG, attention="dsa", dsa_density=0.5,
                                              dsa_block_size=4)).train()
    losses = _fit_a_fixed_batch(model)
    assert losses[-1] < 0.9 * losses[0], losses


def test_backend_defaults_to_the_config():
    x, t, cond, text = _inputs()
    window = _model()(x, t, cond, text, attention="window")
    torch.testing.assert_close(_model(dataclasses.replace(CFG, attention="window"))(x, t, cond, text), window)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(dit, "checkpoint", counting_checkpoint)
    x, t, cond, text = _inputs()
    grads = []
    for ckpt in (False, True):
        model = _model(dataclasses.replace(CFG, grad_checkpointing=ckpt)).train()
        model(x, t, cond, text).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [False] * CFG.depth, "every block checkpointed, non-reentrant, only when enabled"
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_a_few_optimizer_steps_reduce_a_fixed_batch_loss():
    torch.manual_seed(0)
    model = StreamEditDiT(CFG).train()  # the real initialisation, zero output layer included
    losses = _fit_a_fixed_batch(model)
    assert losses[-1] < 0.9 * losses[0], losses


def test_bfloat16_forward():
    model = _model().to(torch.bfloat16)
    x, t, cond, text = _inputs()
    v = model(x.bfloat16(), t, cond.bfloat16(), text)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()


def test_operations_are_injected():
    made = []

    class Linear(nn.Linear):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    ops = types.SimpleNamespace(Linear=Linear, LayerNorm=nn.LayerNorm)
    model = StreamEditDiT(CFG, operations=ops)
    assert len(made) == sum(isinstance(m, nn.Linear) for m in model.modules())
    x, t, cond, text = _inputs()
    assert model(x, t, cond, text).shape == x.shape


def test_bad_inputs():
    model = StreamEditDiT(CFG)
    x, t, cond, text = _inputs(B=2, T=4)
    with pytest.raises(ValueError, match=r"cond must have the shape of x \(2, 12, 4, 4, 4\), got \(2, 12, 3, 4, 4\)"):
        model(x, t, cond[:, :, :3], text)
    with pytest.raises(ValueError, match=r"x must be latents \[B, 12, T, h, w\], got \(2, 8, 4, 4, 4\)"):
        model(x[:, :8], t, cond[:, :8], text)
    with pytest.raises(ValueError, match=r"t must be \[B, T\] = \[2, 4\].*got \(2,\)"):
        model(x, t[:, 0], cond, text)
    xl, tl, cl, textl = _inputs(B=1, T=CFG.max_frames + 1)
    with pytest.raises(ValueError, match=f"{CFG.max_frames + 1} latent frames exceeds max_frames={CFG.max_frames}"):
        model(xl, tl, cl, textl)
    two = TextEmbedding(text.states * 2, text.masks * 2)
    with pytest.raises(ValueError, match="text has 2 members, the model expects 1"):
        model(x, t, cond, two)
    wrong_dim = TextEmbedding((text.states[0][..., :100],), text.masks)
    with pytest.raises(ValueError, match=r"states must be \[2, L, 384\], got \(2, 16, 100\)"):
        model(x, t, cond, wrong_dim)
    wrong_batch = TextEmbedding((text.states[0][:1],), (text.masks[0][:1],))
    with pytest.raises(ValueError, match=r"states must be \[2, L, 384\], got \(1, 16, 384\)"):
        model(x, t, cond, wrong_batch)
    float_mask = TextEmbedding(text.states, (text.masks[0].float(),))
    with pytest.raises(ValueError, match="mask must be bool"):
        model(x, t, cond, float_mask)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        model(x, t, cond, text, attention="flash")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["dense", "window", "dsa"])
def test_forward_has_no_host_sync(backend):
    model = _model().cuda()
    x, t, cond, text = (a.cuda() if torch.is_tensor(a) else a.to("cuda") for a in _inputs())
    model(x, t, cond, text, attention=backend)  # warm up (first-call allocations)
    torch.cuda.set_sync_debug_mode("error")
    try:
        v = model(x, t, cond, text, attention=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert v.shape == x.shape


@pytest.mark.parametrize("h,w", [(6, 4), (4, 5), (3, 7), (1, 1)])
def test_any_latent_size_padded_and_cropped(h, w):
    """Latent grids that are not a multiple of 2 patches are padded inside and cropped back, and
    the padding never leaks in: the output on the real grid equals the output computed on an
    input padded by hand the same way."""
    torch.manual_seed(0)
    model = StreamEditDiT(CFG)
    for p in model.final_linear.parameters():  # an untrained DiT predicts exactly zero
        torch.nn.init.normal_(p, std=0.02)
    x, t, cond, text = _inputs(h=h, w=w)
    out = model(x, t, cond, text)
    assert out.shape == x.shape and torch.isfinite(out).all()
    m = 2 * CFG.patch_size
    pad = (0, -w % m, 0, -h % m, 0, 0)
    xp = torch.nn.functional.pad(x, pad, mode="replicate")
    cp = torch.nn.functional.pad(cond, pad, mode="replicate")
    torch.testing.assert_close(out, model(xp, t, cp, text)[..., :h, :w])
