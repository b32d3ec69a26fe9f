"""The pixel refiner: identity until trained, one correction per released latent frame (the
history keeps the DiT's own output), its STLE views, its training, and old checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from model_helpers import SMALL_REFINER, make_live_tiny_model, make_refined_model
from streamedit_core.io.checkpoint import load_checkpoint, save_checkpoint
from streamedit_core.config import ModelConfig, RefinerConfig
from streamedit_core.stream.editor import StreamEditor
from streamedit_core.model.refiner import colour_grade
from streamedit_core.train.refine import RefinerData, train_refiner, with_refiner

SMALL = SMALL_REFINER


@pytest.fixture
def refined_model():
    return make_refined_model()


def _edit(model, text, clip, prompt="make it red"):
    editor = StreamEditor(model, text, prompt)
    return torch.cat([editor.feed(clip), editor.flush()])


def _assert_same_model(loaded, model, text, clip, expected=None):
    """A checkpoint round trip keeps every weight bit for bit; the edits then agree to float
    rounding (not bitwise: CPU kernels may take another vector path on freshly loaded tensors)."""
    a, b = loaded.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected = _edit(model, text, clip) if expected is None else expected
    torch.testing.assert_close(_edit(loaded, text, clip), expected, rtol=0, atol=1e-6)


def _clip(frames=8, size=16, seed=0):
    return torch.rand(frames, size, size, 3, generator=torch.Generator().manual_seed(seed))


def test_presets_and_config_round_trip():
    from streamedit_core.config import get_preset
    # No preset has one: train_demo fits one to the distilled student (--refiner-width, default 32;
    # the shipped model has one: docs/demo-model.md, The pixel refiner).
    assert all(get_preset(name).refiner.width == 0 for name in ("tiny", "demo", "2b", "10b"))
    config = get_preset("tiny").replace(refiner=SMALL)
    assert ModelConfig.from_json(config.to_json()) == config
    # A config written before refiners existed (no "refiner" key) still loads, with none.
    old = json.loads(get_preset("tiny").to_json())
    del old["refiner"]
    assert ModelConfig.from_dict(old).refiner.width == 0
    with pytest.raises(ValueError, match="refiner width"):
        get_preset("tiny").replace(refiner=RefinerConfig(width=-1))


def test_untrained_refiner_changes_nothing(fake_text):
    base = make_live_tiny_model()
    model = with_refiner(base, SMALL)
    clip = _clip()
    assert torch.equal(_edit(model, fake_text, clip), _edit(base, fake_text, clip))


def test_stle_linear_views_match_decode_of_a_pca_stle(tiny_model):
    stle = tiny_model.stle
    stle.init_linear_path(_clip(frames=8, size=32).permute(3, 0, 1, 2)[None])
    z = torch.randn(1, stle.cfg.latent_channels, 2, 2, 2)
    assert torch.allclose(stle.linear_decode(z), stle.decode(z), atol=1e-5)
    # A change coded by linear_encode_delta moves linear_decode by its projection: coding the
    # change that a latent change makes gives that latent change back (orthonormal PCA basis).
    dz = torch.randn_like(z) * 0.01
    delta = stle.linear_decode(z + dz) - stle.linear_decode(z)
    assert torch.allclose(stle.linear_encode_delta(delta), dz, atol=1e-4)


def test_refiner_corrects_only_what_is_released(refined_model, fake_text):
    """The stream's output changes, the DiT's history does not: a refined model's history
    window is exactly the unrefined model's."""
    clip = _clip(frames=16)
    plain = with_refiner(make_live_tiny_model(), SMALL)  # the same weights, identity refiner
    out_r, out_p = _edit(refined_model, fake_text, clip), _edit(plain, fake_text, clip)
    assert out_r.shape == out_p.shape == clip.shape
    assert (out_r - out_p).abs().max() > 1e-3
    states = []
    for model in (refined_model, plain):
        editor = StreamEditor(model, fake_text, "make it red")
        editor.feed(clip)
        states.append(editor.stream_state.history[:editor.stream_state.history_len].clone())
    assert torch.equal(*states)


def test_refiner_survives_a_checkpoint(refined_model, fake_text, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(refined_model, path)
    loaded = load_checkpoint(path)
    assert loaded.config.refiner == SMALL
    clip = _clip()
    _assert_same_model(loaded, refined_model, fake_text, clip)


def test_train_refiner_learns_a_pixel_edit(tiny_model):
    """A sketch-like edit (edges of the source) from a useless input (the source itself): the
    fitted refiner's error falls well below where it started. The DiT is untouched."""
    model = with_refiner(tiny_model, RefinerConfig(width=16, film_hidden=16))
    dit_before = {k: v.clone() for k, v in model.dit.state_dict().items()}
    src = torch.rand(6, 4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    gray = src.mean(2, keepdim=True)
    edges = (gray - torch.nn.functional.avg_pool3d(gray, (1, 3, 3), 1, (0, 1, 1))).abs()
    target = (1 - 4 * edges).clamp(0, 1).expand_as(src).contiguous()
    data = RefinerData(src, src, target, torch.randn(6, model.config.dit.hidden_size))
    losses = train_refiner(model, data, 300, pairs_per_step=4, frames_per_pair=2, lr=3e-3, log_every=0)
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:5]) / 5
    assert all(torch.equal(v, model.dit.state_dict()[k]) for k, v in dit_before.items())


def test_the_loss_counts_the_change_between_frames(tiny_model):
    """Edited frames that flip between 0 and 1 over a still grey target: before any update (the
    refiner is the identity) every window of consecutive frames costs 0.25 of pixel MSE plus the
    weight times 1, the squared frame-to-frame change the target does not have."""
    flip = (torch.arange(6) % 2).float()[None, :, None, None, None].expand(3, 6, 3, 8, 8).contiguous()
    data = RefinerData(flip, flip, torch.full_like(flip, 0.5), torch.zeros(3, tiny_model.config.dit.hidden_size))
    for weight in (0.0, 2.0):
        model = with_refiner(tiny_model, RefinerConfig(width=4, film_hidden=4))
        losses = train_refiner(model, data, 1, pairs_per_step=2, frames_per_pair=3, temporal_weight=weight,
                               log_every=0)
        assert losses[0] == pytest.approx(0.25 + weight)


def test_errors(tiny_model):
    with pytest.raises(ValueError, match="has no refiner"):
        train_refiner(tiny_model, None, 10)
    with pytest.raises(ValueError, match="width > 0"):
        with_refiner(tiny_model, RefinerConfig())
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_refiner(with_refiner(tiny_model, SMALL), None, 0)
    data = RefinerData(*(torch.zeros(2, 3, 3, 8, 8) for _ in range(3)), torch.zeros(2, tiny_model.config.dit.hidden_size))
    with pytest.raises(ValueError, match="temporal weight and prompt noise must be >= 0"):
        train_refiner(with_refiner(tiny_model, SMALL), data, 5, temporal_weight=-1)
    with pytest.raises(ValueError, match="temporal weight and prompt noise must be >= 0"):
        train_refiner(with_refiner(tiny_model, SMALL), data, 5, prompt_noise=-0.1)
    with pytest.raises(ValueError, match="frames_per_pair must be in 1..3"):
        train_refiner(with_refiner(tiny_model, SMALL), data, 5, frames_per_pair=4)


def test_a_refiner_without_the_prompt(fake_text):
    """prompt=False: no FiLM, and the correction depends on the frames alone."""
    cfg = RefinerConfig(width=8, prompt=False)
    model = with_refiner(make_live_tiny_model(), cfg)
    assert model.refiner.film is None
    with torch.no_grad():
        model.refiner.out.weight.normal_(0, 0.1)
    clip = _clip()
    delta = _edit(model, fake_text, clip, "make it red") - _edit(make_live_tiny_model(), fake_text, clip, "make it red")
    assert delta.abs().max() > 1e-3
    src = torch.rand(4, 2, 3, 16, 16)
    data = RefinerData(src, src, 1 - src, torch.zeros(4, model.config.dit.hidden_size))
    losses = train_refiner(model, data, 100, pairs_per_step=2, frames_per_pair=2, log_every=0)
    assert sum(losses[-10:]) < sum(losses[:10])


GRADED = RefinerConfig(width=8, film_hidden=16, grade_knots=33)


def test_a_zero_colour_grade_is_the_identity():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(colour_grade(x, torch.zeros(2, 12 + 3 * 33), 33), x, atol=1e-6)


@pytest.mark.parametrize("family", ["posterize", "brighter", "invert", "warm", "grayscale", "sepia"])
def test_the_colour_grade_expresses_the_colour_families(family):
    """Matrix, offset and curves fitted straight to a family's edit of random pixels reach its
    ground truth (posterize's steps are one knot interval wide, the rest is exact)."""
    from streamedit_core.data.synthetic import FAMILIES
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    target = FAMILIES[family].apply(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    params = torch.zeros(1, 12 + 3 * 33, requires_grad=True)
    opt = torch.optim.Adam([params], lr=0.02)
    for _ in range(400):
        loss = (colour_grade(x, params, 33) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert 10 * torch.log10(1 / loss.detach()) > 28


def test_an_untrained_graded_refiner_changes_nothing_and_survives_a_checkpoint(fake_text, tmp_path):
    base = make_live_tiny_model()
    model = with_refiner(base, GRADED)
    clip = _clip()
    assert torch.equal(_edit(model, fake_text, clip), _edit(base, fake_text, clip))
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in (*model.refiner.out.parameters(), *model.refiner.grade.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    assert (_edit(model, fake_text, clip) - _edit(base, fake_text, clip)).abs().max() > 1e-3
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config.refiner == GRADED
    _assert_same_model(loaded, model, fake_text, clip)


def test_train_refiner_learns_a_posterize_through_the_grade(tiny_model):
    """The staircase a few 1x1 layers smooth over: with the grade the fitted refiner's error
    on it falls to a fraction of the identity's."""
    from streamedit_core.data.synthetic import posterize
    src = torch.rand(6, 4, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    data = RefinerData(src, src, posterize(src), torch.randn(6, tiny_model.config.dit.hidden_size))
    model = with_refiner(tiny_model, GRADED)
    losses = train_refiner(model, data, 300, pairs_per_step=4, frames_per_pair=2, temporal_weight=0.0,
                           lr=3e-3, log_every=0)
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:5]) / 5


def test_grade_config_errors():
    from streamedit_core.config import get_preset
    for bad in (RefinerConfig(width=8, grade_knots=1), RefinerConfig(width=8, grade_knots=33, prompt=False)):
        with pytest.raises(ValueError, match="grade_knots"):
            get_preset("tiny").replace(refiner=bad)


def test_prompt_noise_changes_the_fit_not_the_start(tiny_model):
    """The identity refiner's first loss does not read the prompt, so noise leaves it alone; the
    fit after it does, and is the same for the same seed and start."""
    src = torch.rand(4, 3, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    data = RefinerData(src, src, 1 - src, torch.randn(4, tiny_model.config.dit.hidden_size))

    def fit(noise):
        torch.manual_seed(0)  # the fresh refiner's convolutions
        return train_refiner(with_refiner(tiny_model, SMALL), data, 4, pairs_per_step=2, frames_per_pair=2,
                             prompt_noise=noise, log_every=0)
    plain, noisy = fit(0.0), fit(0.5)
    assert plain[0] == noisy[0] and plain[1:] != noisy[1:]
    assert fit(0.5) == noisy


def _text_view(view: str) -> RefinerConfig:
    return RefinerConfig(width=8, film_hidden=16, grade_knots=5, prompt_view=view)


@pytest.mark.parametrize("view", ["text", "both"])
def test_a_refiner_on_the_text_view_reads_the_members_token_means(view, fake_text, tmp_path):
    """prompt_view "text": the refiner's prompt is the members' mean over real tokens, not the
    DiT's pooling ("both": the DiT's pooled vector beside it, each part layer-normed); an
    untrained one is still the identity, and a trained one reads its prompt and survives a
    checkpoint."""
    base = make_live_tiny_model()
    model = with_refiner(base, _text_view(view))
    members = base.config.dit.text_members
    means = torch.cat(fake_text.encode(["make it red"]).token_means(), -1)
    emb = fake_text.encode(["make it red"])
    if view == "text":
        assert model.refiner.film[0].in_features == sum(m.dim for m in members)
        assert torch.equal(model.refiner_prompt(emb), means)
    else:
        hidden = base.config.dit.hidden_size
        assert model.refiner.film[0].in_features == hidden + sum(m.dim for m in members)
        seen = model.refiner_prompt(emb)
        norm = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:])  # noqa: E731
        torch.testing.assert_close(seen[:, hidden:], norm(means))
        torch.testing.assert_close(seen[:, :hidden], norm(model.dit.pool_text(emb)))
    clip = _clip()
    assert torch.equal(_edit(model, fake_text, clip), _edit(base, fake_text, clip))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in (*model.refiner.out.parameters(), *model.refiner.grade.parameters(),
                  *model.refiner.film[-1].parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    red, blue = _edit(model, fake_text, clip), _edit(model, fake_text, clip, prompt="make it blue")
    assert (red - blue).abs().max() > 1e-3
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config.refiner == _text_view(view)
    _assert_same_model(loaded, model, fake_text, clip, expected=red)


def test_prompt_view_errors():
    from streamedit_core.config import get_preset
    with pytest.raises(ValueError, match="prompt_view='pooled'.*'dit', 'text', 'both'"):
        get_preset("tiny").replace(refiner=RefinerConfig(width=8, prompt_view="pooled"))


def test_wording_swap_reads_other_wordings_of_the_pairs_edit(tiny_model):
    """wording_swap 1: every step reads each pair under a wording of its own family's bank, never
    its own nor another family's; 0 is the plain fit, bit for bit, and needs no bank."""
    d = tiny_model.config.dit.hidden_size
    src = torch.rand(4, 3, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    own = torch.zeros(4, d)
    banks = (torch.full((5, d), 1.0), torch.full((3, d), -1.0))
    family = torch.tensor([0, 1, 0, 1])
    data = RefinerData(src, src, 1 - src, own, banks, family)
    seen = []

    def fit(swap, data=data):
        torch.manual_seed(0)
        model = with_refiner(tiny_model, SMALL)
        model.refiner.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[0], args[2].clone())))
        return train_refiner(model, data, 6, pairs_per_step=2, frames_per_pair=2, wording_swap=swap, log_every=0)

    fit(1.0)
    assert len(seen) == 6
    for _, pooled in seen:
        assert pooled.abs().min() == 1  # a bank row, never the pair's own (zero) wording
    seen.clear()
    plain = fit(0.0)
    assert all(p.abs().max() == 0 for _, p in seen)
    assert plain == fit(0.0, RefinerData(src, src, 1 - src, own))
    with pytest.raises(ValueError, match="wording_swap"):
        fit(0.5, RefinerData(src, src, 1 - src, own))
    with pytest.raises(ValueError, match="wording_swap"):
        fit(1.5)


def test_family_wordings_are_train_wordings_and_their_filler_variants():
    from streamedit_core.data import synthetic
    from streamedit_core.train.refine import family_wordings
    words = family_wordings(["hue_blue", "pixelate"], fillers=2)
    for family, ws in words.items():
        base = synthetic.split_paraphrases(family, "train")
        assert len(ws) == 3 * len(base) and ws[:len(base)] == list(base)
        held_out = {w for s in ("validation", "test") for w in synthetic.split_paraphrases(family, s)}
        assert not held_out & set(ws)
    assert family_wordings(["sepia"], fillers=0)["sepia"] == list(synthetic.split_paraphrases("sepia", "train"))


def test_refiner_data_encodes_each_familys_wordings_as_the_refiner_reads_them():
    """refiner_data(..., wordings): per family of the pairs (in their order), the refiner's view
    of each wording, encoded in batches as one by one; each pair points at its own family's."""
    from streamedit_core.eval.benchmark import build_pairs
    from streamedit_core.train.refine import family_wordings, refiner_data
    from streamedit_core.model.text import RandomText
    model = with_refiner(make_live_tiny_model(), SMALL)
    text = RandomText(model.config.dit.text_members)  # encodes a batch row by row, as a real encoder
    pairs = build_pairs("train", limit=3, size=16, frames=8)
    wordings = family_wordings([p.family for p in pairs], fillers=1)
    data = refiner_data(model, text, pairs, wordings, batch=7)
    assert data.family.tolist() == [0, 1, 2]
    for p, bank in zip(pairs, data.wordings):
        one_by_one = torch.cat([model.refiner_prompt(text.encode([w])) for w in wordings[p.family]])
        torch.testing.assert_close(bank, one_by_one, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no wordings given"):
        refiner_data(model, text, pairs, {pairs[0].family: wordings[pairs[0].family]})
