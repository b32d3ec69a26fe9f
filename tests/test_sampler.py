"""Samplers: the schedule, the offline teacher, the streaming sampler's levels/NFE and the ASW."""
import dataclasses

import pytest
import torch
from torch import nn

from streamedit_core.config import PRESETS
from streamedit_core.stream.sampler import (StreamSampler, activation_bytes_per_frame, flow_timesteps,
                                     frame_noise, sample_offline)
from streamedit_core.types import TextEmbedding

CFG = PRESETS["tiny"]


def _text(batch=1, value=1.0):
    return TextEmbedding((torch.full((batch, 16, 384), value),), (torch.ones(batch, 16, dtype=torch.bool),))


class OracleDiT(nn.Module):
    """Predicts the exact velocity towards x0 = cond: v = (x_t - x0) / t. A correct sampler then
    lands every frame on its condition. Records every call's window and noise levels."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, cond, text, attention=None):
        self.calls.append({"shape": tuple(x.shape), "t": t.clone(), "text_batch": text.batch_size})
        tt = t.clamp_min(1e-6)[:, None, :, None, None]  # [B, 1, T, 1, 1]
        return (x - cond) / tt


class OracleModel(nn.Module):
    def __init__(self, config=CFG):
        super().__init__()
        self.config = config
        self.dit = OracleDiT()

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32


def _sampler(model=None, **changes):
    cfg = dataclasses.replace(CFG.sampler, **changes)
    return StreamSampler(model or OracleModel(), cfg, seed=0)


# --- schedule --------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 6, 12])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_timesteps_monotone_from_one_to_zero(steps, shift):
    t = flow_timesteps(steps, shift)
    assert t.shape == (steps + 1,) and t.dtype == torch.float32
    assert t[0] == 1.0 and t[-1] == 0.0
    assert bool((t[1:] < t[:-1]).all())


def test_flow_timesteps_shift():
    uniform = flow_timesteps(6, 1.0)
    assert torch.allclose(uniform, torch.linspace(1, 0, 7))
    shifted = flow_timesteps(6, 3.0)
    assert bool((shifted[1:-1] > uniform[1:-1]).all())  # shift > 1: more time at high noise
    assert bool((flow_timesteps(6, 0.5)[1:-1] < uniform[1:-1]).all())


@pytest.mark.parametrize("steps,shift,match", [(0, 3.0, "steps must be a positive integer, got 0"),
                                               (2.5, 3.0, "got 2.5"), (6, 0.0, "shift must be > 0, got 0.0")])
def test_flow_timesteps_bad_args(steps, shift, match):
    with pytest.raises(ValueError, match=match):
        flow_timesteps(steps, shift)


# --- offline teacher ---------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 4, 6])
def test_sample_offline_nfe_and_exact_on_oracle(steps):
    model = OracleModel()
    src = torch.randn(2, 12, 3, 2, 2)
    out = sample_offline(model, src, _text(), steps, generator=torch.Generator().manual_seed(0))
    assert len(model.dit.calls) == steps
    assert all(c["shape"] == (2, 12, 3, 2, 2) for c in model.dit.calls)
    assert torch.allclose(out, src, atol=1e-4)  # Euler steps on the exact velocity land on x0
    levels = torch.stack([c["t"][0, 0] for c in model.dit.calls])
    assert torch.equal(levels, flow_timesteps(steps, 3.0)[:-1])


def test_sample_offline_cfg_runs_cond_and_uncond_as_one_batch(live_tiny_model):
    src = torch.randn(1, 12, 2, 4, 4)
    calls = []
    live_tiny_model.dit.register_forward_hook(lambda m, a, out: calls.append(tuple(a[0].shape)))
    null = TextEmbedding((torch.zeros(1, 16, 384),), (torch.zeros(1, 16, dtype=torch.bool),))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    guided = sample_offline(live_tiny_model, src, _text(), 3, cfg_scale=4.0, null_text=null, generator=g())
    assert calls == [(2, 12, 2, 4, 4)] * 3 and guided.shape == src.shape
    plain = sample_offline(live_tiny_model, src, _text(), 3, cfg_scale=1.0, generator=g())
    assert not torch.allclose(guided, plain)
    with pytest.raises(ValueError, match="cfg_scale=4.0 needs a null"):
        sample_offline(live_tiny_model, src, _text(), 3, cfg_scale=4.0, generator=g())
    with pytest.raises(ValueError, match=r"\[B, C, T, h, w\], got shape \(12, 2, 4, 4\)"):
        sample_offline(live_tiny_model, src[0], _text(), 3)


# --- streaming -------------------------------------------------------------------------------

def test_stream_levels_nfe_and_exact_on_oracle():
    steps, n_latents = 6, 10
    sampler = _sampler(steps=steps, window_min=1, window_max=2)
    model_calls = sampler.dit.calls
    state = sampler.new_state()
    srcs = [torch.full((12, 2, 2), float(i)) + 0.01 * torch.randn(12, 2, 2) for i in range(n_latents)]
    out = []
    for i, s in enumerate(srcs):
        r = sampler.step(state, s, _text())
        assert (r is None) == (i < steps - 1)  # warm-up: the first N-1 latents give nothing
        if r is not None:
            out.append(r)
    assert len(model_calls) == n_latents  # one forward per source latent
    while state.n_inflight:
        out.append(sampler.drain(state, _text()))
    assert len(model_calls) == n_latents + steps - 1 and len(out) == n_latents
    assert sampler.drain(state, _text()) is None  # nothing left: no forward
    assert len(model_calls) == n_latents + steps - 1
    # every frame went through every level with its own dt and landed on its source latent
    for r, s in zip(out, srcs):
        assert torch.allclose(r, s, atol=1e-4)
    # steady state: history at t=0, then in-flight frames at t_{N-1} .. t_0 in time order
    ts = flow_timesteps(steps, 3.0)
    steady = model_calls[steps + 2]["t"][0]
    hist = len(steady) - steps
    assert hist >= 1 and bool((steady[:hist] == 0).all())
    assert torch.equal(steady[hist:], ts[:steps].flip(0))


def test_stream_noise_is_seeded_per_latent_frame():
    a, b = frame_noise(5, 3, (12, 2, 2), "cpu"), frame_noise(5, 3, (12, 2, 2), "cpu")
    assert torch.equal(a, b)
    assert not torch.equal(a, frame_noise(5, 4, (12, 2, 2), "cpu"))
    assert not torch.equal(a, frame_noise(6, 3, (12, 2, 2), "cpu"))


def test_stream_cfg_batches_two(live_tiny_model):
    calls = []
    live_tiny_model.dit.register_forward_hook(lambda m, a, out: calls.append(tuple(a[0].shape)))
    null = TextEmbedding((torch.zeros(1, 16, 384),), (torch.zeros(1, 16, dtype=torch.bool),))
    sampler = _sampler(live_tiny_model, steps=2, cfg_scale=3.0)
    state = sampler.new_state()
    with torch.inference_mode():
        sampler.step(state, torch.randn(12, 4, 4), _text(), null)
        sampler.step(state, torch.randn(12, 4, 4), _text(), null)
    assert calls[0][0] == 2 and calls[1][0] == 2


def _feed(sampler, state, latents):
    windows = []
    for s in latents:
        sampler.step(state, s, _text())
        windows.append(state.window)
    return windows


def test_asw_grows_on_static_content_and_shrinks_on_scene_cut():
    sampler = _sampler(steps=2, window_min=1, window_max=4, scene_cut_threshold=0.5)
    state = sampler.new_state()
    a = torch.randn(12, 2, 2)
    windows = _feed(sampler, state, [a] * 6)
    assert windows == [1, 2, 3, 4, 4, 4]  # static: grows by one per step up to window_max
    assert state.history_len == 4
    cut = _feed(sampler, state, [torch.randn(12, 2, 2) * 5])  # a new scene
    assert cut == [1] and state.history_len <= 1
    # moving but not a cut: the window holds
    b = torch.randn(12, 2, 2)
    d = torch.randn(12, 2, 2) * b.norm() / 2**0.5 / 12 ** 0.5 / 2  # |d| ~ |b| / 2
    moving = [b + 0.3 * i * d for i in range(3)]  # steps of ~0.15 relative: neither cut nor static
    state2 = sampler.new_state()
    _feed(sampler, state2, [b, b, b])
    w = _feed(sampler, state2, moving[1:])
    assert w == [3, 3]
    # the windows the DiT saw: never more than window_max history + steps in flight
    assert max(c["shape"][2] for c in sampler.dit.calls) == 4 + 2


def test_prompt_change_shrinks_window():
    sampler = _sampler(steps=2, window_min=1, window_max=4)
    state = sampler.new_state()
    _feed(sampler, state, [torch.ones(12, 2, 2)] * 6)
    assert state.window == 4 and state.history_len == 4
    sampler.shrink(state)
    assert state.window == 1 and state.history_len == 1


def test_memory_budget_caps_window():
    per_frame = activation_bytes_per_frame(CFG.dit, (8, 8), 1, 4)
    assert per_frame == activation_bytes_per_frame(CFG.dit, (8, 8), 2, 4) // 2
    budget_mb = (2 + 3) * per_frame / 2**20  # room for 3 in flight + 2 history
    sampler = _sampler(steps=3, window_min=1, window_max=6, memory_budget_mb=budget_mb)
    assert sampler.history_cap((8, 8)) == 2
    assert sampler.history_cap((4, 4)) == 6  # smaller latents: window_max is the limit
    state = sampler.new_state()
    windows = _feed(sampler, state, [torch.ones(12, 8, 8)] * 8)
    assert max(windows) == 2
    assert max(c["shape"][2] for c in sampler.dit.calls) == 2 + 3
    tight = _sampler(steps=3, window_min=1, window_max=6, memory_budget_mb=budget_mb / 2)
    with pytest.raises(ValueError, match=r"memory_budget_mb=.* too small for latents of 8x8"):
        tight.step(tight.new_state(), torch.ones(12, 8, 8), _text())


def test_stream_sampler_bad_settings():
    with pytest.raises(ValueError, match="window_max=12 \\+ steps=6 .* max_frames=16"):
        _sampler(window_max=12)
    with pytest.raises(ValueError, match="window_min=3, window_max=2"):
        _sampler(window_min=3, window_max=2)
    sampler = _sampler(steps=2)
    state = sampler.new_state()
    sampler.step(state, torch.ones(12, 2, 2), _text())
    with pytest.raises(ValueError, match=r"latent size changed mid-stream: \(12, 2, 2\) -> \(12, 4, 4\)"):
        sampler.step(state, torch.ones(12, 4, 4), _text())
