"""The model's closed vocabulary of edits (model/vocabulary.py): its config, the builder
(`train.refine.with_vocabulary`), the refiner reading every prompt as the nearest edit, and
`read_prompt` saying which edit that was and how far; on tiny models and on the shipped one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import SMALL_REFINER, make_live_tiny_model, make_refined_model
from streamedit_core.config import PRESETS, ModelConfig, RefinerConfig, VocabularyConfig, get_preset
from streamedit_core.data import synthetic
from streamedit_core.io.checkpoint import load_checkpoint, save_checkpoint
from streamedit_core.model.vocabulary import NO_EDIT, Reading, Vocabulary
from streamedit_core.train.refine import with_refiner, with_threshold, with_vocabulary

SMALL = SMALL_REFINER
FAMILIES = ["grayscale", "hue_red", "invert"]
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "streamedit_demo.safetensors"


@pytest.fixture
def refined_model():
    return make_refined_model()


@pytest.fixture
def vocab_model(refined_model, fake_text):
    """refined_model with a vocabulary of FAMILIES and "none"."""
    return with_vocabulary(refined_model, fake_text, FAMILIES)


def test_no_preset_has_a_vocabulary_and_the_config_round_trips():
    assert all(not config.vocabulary.edits for config in PRESETS.values())
    cfg = VocabularyConfig(edits=("warm", NO_EDIT), wordings=(("give it a warm tint", "warm it up"), ()))
    config = get_preset("tiny").replace(refiner=SMALL, vocabulary=cfg)
    again = ModelConfig.from_json(config.to_json())
    assert again == config and again.vocabulary.wordings[0] == ("give it a warm tint", "warm it up")
    assert json.loads(config.to_json())["vocabulary"] == {
        "edits": ["warm", "none"], "wordings": [["give it a warm tint", "warm it up"], []],
        "view": "refiner", "distance": "layer_norm_euclidean", "threshold": 0.0}
    # A config written before vocabularies (no "vocabulary" key) loads with none.
    old = json.loads(get_preset("tiny").to_json())
    del old["vocabulary"]
    assert ModelConfig.from_dict(old).vocabulary == VocabularyConfig()


@pytest.mark.parametrize("bad, message", [
    (dict(edits=("a", "a")), "edits=.*distinct non-empty names"),
    (dict(edits=("a", "")), "edits=.*distinct non-empty names"),
    (dict(edits=["a"]), "edits=.*a tuple of"),
    (dict(edits=("a", "b"), wordings=(("x",),)), r"wordings=.*one tuple of non-empty strings per edit \(2 edits\)"),
    (dict(edits=("a",), wordings=(("",),)), "wordings=.*non-empty strings"),
    (dict(edits=("a",), wordings=("x",)), "wordings=.*one tuple"),
    (dict(edits=("a",), view="text"), "view='text'.*expected one of \\('refiner',\\)"),
    (dict(edits=("a",), distance="cosine"), "distance='cosine'"),
    (dict(edits=("a",), wordings=(("x",),), threshold=1.5), "threshold=1.5 must be a number in \\[0, 1\\]"),
    (dict(edits=("a",), threshold=0.3), "above 0 only with wordings"),
])
def test_a_malformed_vocabulary_is_a_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        VocabularyConfig(**bad)


def test_a_vocabulary_needs_a_refiner_that_reads_the_prompt():
    tiny, vocab = get_preset("tiny"), VocabularyConfig(edits=("a", NO_EDIT))
    for refiner in (RefinerConfig(), RefinerConfig(width=8, prompt=False)):
        with pytest.raises(ValueError, match="vocabulary of edits .* needs a refiner .* that reads the prompt"):
            tiny.replace(refiner=refiner, vocabulary=vocab)
    d = json.loads(tiny.replace(refiner=SMALL, vocabulary=vocab).to_json())
    d["vocabulary"]["edits"] = ["a", "a"]
    with pytest.raises(ValueError, match="distinct non-empty names"):
        ModelConfig.from_dict(d)
    d["vocabulary"] = {"edits": ["a"], "colour": "red"}
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\] for VocabularyConfig"):
        ModelConfig.from_dict(d)


def test_with_vocabulary_builds_anchors_from_the_train_wordings(refined_model, vocab_model, fake_text, tmp_path):
    """One anchor per family, the mean of the refiner's view of all its train wordings, one for the
    empty prompt; the config lists every train wording (none's too) and a threshold set on the
    validation wordings; nothing else changes."""
    model = vocab_model
    vocab = model.config.vocabulary
    assert vocab.edits == (*FAMILIES, NO_EDIT) and model.vocabulary.edits == vocab.edits
    assert vocab.wordings == (*(synthetic.split_paraphrases(f, "train") for f in FAMILIES),
                              synthetic.NO_EDIT_WORDINGS["train"])
    assert model.vocabulary.wordings("hue_red")[0] == synthetic.split_paraphrases("hue_red", "train")[0]
    validation = [w for f in FAMILIES for w in synthetic.split_paraphrases(f, "validation")]
    validation += synthetic.NO_EDIT_WORDINGS["validation"]
    readings = model.read_prompt(fake_text.encode(validation), model.vocabulary.wording_vectors(fake_text))
    assert 0 < vocab.threshold <= min(r.similarity for r in readings) < vocab.threshold + 1e-4
    assert all(r.known for r in readings)  # the threshold flags no validation wording
    before, after = refined_model.state_dict(), model.state_dict()
    assert set(after) - set(before) == {"vocabulary.anchors"}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.replace(vocabulary=VocabularyConfig()) == refined_model.config
    views = refined_model.refiner_prompt(fake_text.encode(list(synthetic.split_paraphrases("hue_red", "train"))))
    torch.testing.assert_close(model.vocabulary.anchors[1], views.mean(0))
    assert torch.equal(model.vocabulary.anchors[3:], refined_model.refiner_prompt(fake_text.null(1)))

    # The vocabulary survives a checkpoint, under its own name.
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    assert torch.equal(loaded.vocabulary.anchors, model.vocabulary.anchors)
    # Built again (after a refit), it is replaced, not added to; keep_anchors keeps what the
    # refiner reads and rebuilds the rest.
    again = with_vocabulary(model, fake_text, ["sepia"])
    assert again.config.vocabulary.edits == ("sepia", NO_EDIT) and again.vocabulary.anchors.shape[0] == 2
    kept = with_vocabulary(with_threshold(model, 0.0), fake_text, FAMILIES, keep_anchors=True)
    assert kept.config == model.config and torch.equal(kept.vocabulary.anchors, model.vocabulary.anchors)
    with pytest.raises(ValueError, match="keep_anchors needs a vocabulary of the edits"):
        with_vocabulary(model, fake_text, ["sepia"], keep_anchors=True)


def test_the_refiner_reads_the_prompt_as_the_nearest_edit(refined_model, vocab_model, fake_text):
    """Wordings read as the same edit refine alike (not so without a vocabulary); the empty prompt
    is its own edit and refines as without; `snap` and `read_prompt` agree on the edit."""
    model, vocab = vocab_model, vocab_model.vocabulary
    assert vocab.nearest(vocab.anchors).tolist() == [0, 1, 2, 3]  # each anchor is its own nearest
    red = vocab.anchors[1:2]
    near = red + 0.1 * red.std() * torch.randn(red.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(vocab.snap(near), red)

    wordings = list(synthetic.split_paraphrases("hue_red", "train"))
    text = fake_text.encode(wordings)
    readings = model.read_prompt(text)
    views = model.refiner_prompt(text)
    edits = [r.edit for r in readings]
    assert edits == [vocab.edits[i] for i in vocab.nearest(views).tolist()]
    assert torch.equal(vocab.snap(views), vocab.anchors[[vocab.edits.index(e) for e in edits]])
    common = max(set(edits), key=edits.count)
    a, b = [i for i, e in enumerate(edits) if e == common][:2]
    latents = torch.rand(2, 1, model.config.dit.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(4))

    def refined(m, prompt):
        return m.refine(latents[0], latents[1], fake_text.encode([prompt]))

    assert torch.equal(refined(model, wordings[a]), refined(model, wordings[b]))
    assert not torch.equal(refined(refined_model, wordings[a]), refined(refined_model, wordings[b]))
    empty = lambda m: m.refine(latents[0], latents[1], fake_text.null(1))  # noqa: E731
    assert torch.equal(empty(model), empty(refined_model))


def test_read_prompt_says_which_edit_and_how_far(refined_model, vocab_model, fake_text):
    text = fake_text.encode(["make it red", "invert it", "something else entirely"])
    readings = vocab_model.read_prompt(text)
    dist = vocab_model.vocabulary.distances(vocab_model.refiner_prompt(text))  # [3, 4]
    assert len(readings) == 3 and all(isinstance(r, Reading) for r in readings)
    for r, d in zip(readings, dist):
        names = [r.edit, *(e for e, _ in r.runners_up)]
        values = [r.distance, *(x for _, x in r.runners_up)]
        assert len(names) == 3 and len(set(names)) == 3  # the nearest and 2 runners-up
        assert values == sorted(values) and r.distance == pytest.approx(d.min().item())
        for name, value in zip(names, values):
            assert value == pytest.approx(d[vocab_model.vocabulary.edits.index(name)].item())
    # The empty prompt is read as no edit, at no distance.
    (empty,) = vocab_model.read_prompt(fake_text.null(1), runners_up=0)
    assert empty.edit == NO_EDIT and empty.distance == pytest.approx(0, abs=1e-3) and empty.runners_up == ()
    assert len(vocab_model.read_prompt(text, runners_up=10)[0].runners_up) == 3  # every other edit
    assert str(Reading("sepia", 4.123, (("warm", 6.3), ("grayscale", 7.02)))) == \
        "sepia (distance 4.12; next: warm 6.30, grayscale 7.02)"
    assert str(Reading("none", 0.0)) == "none: no edit, the source passes through"
    assert str(Reading("sepia", 2.9, (), 0.31, "apply a sepia tone", known=False)) == (
        "sepia (distance 2.90) - NOT a known edit: the nearest training wording, 'apply a sepia tone', "
        "is only 0.31 similar")
    # A model without a vocabulary reads every prompt as it is: no reading.
    assert refined_model.vocabulary is None and refined_model.read_prompt(text) is None
    with pytest.raises(ValueError, match="runners_up must be >= 0"):
        vocab_model.read_prompt(text, runners_up=-1)


def test_vocabulary_errors(tiny_model, fake_text):
    with pytest.raises(ValueError, match="needs a model whose refiner reads the prompt"):
        with_vocabulary(tiny_model, fake_text)
    refined = with_refiner(tiny_model, SMALL)
    with pytest.raises(ValueError, match="unknown edit family 'neon'"):
        with_vocabulary(refined, fake_text, ["neon"])
    with pytest.raises(ValueError, match="not 'none'"):
        with_vocabulary(refined, fake_text, ["none"])
    with pytest.raises(ValueError, match="needs one or more edits"):
        Vocabulary(VocabularyConfig(), 4)
    vocab = Vocabulary(VocabularyConfig(edits=("a", NO_EDIT)), 4)
    with pytest.raises(ValueError, match=r"prompt views must be \[N, 4\], got \[4\]"):
        vocab.read(torch.zeros(4))
    with pytest.raises(ValueError, match="unknown edit 'b'; this vocabulary has \\['a', 'none'\\]"):
        vocab.wordings("b")


def test_the_shipped_model_reads_prompts_as_its_edits():
    """The shipped demo model's vocabulary (its format-1 prompt anchors): train wordings are read
    as their family, close; a wording of no family is read as the nearest one, farther than every
    train wording of that family."""
    from streamedit_core.model.text import TextEnsemble
    model = load_checkpoint(SHIPPED, dtype=torch.float32)
    text = TextEnsemble.builtin_for(model.config)
    families = ["grayscale", "sepia", "hue_blue", "blur", "sketch"]
    train = [synthetic.split_paraphrases(f, "train")[0] for f in families]
    test = [synthetic.split_paraphrases(f, "test")[0] for f in ("hue_blue", "pixelate", "warm")]
    foreign = ["make it a watercolor painting", "do nothing"]
    prompts = train + test + foreign
    readings = model.read_prompt(text.encode(prompts))
    for prompt, reading in zip(prompts, readings):
        print(f"{prompt!r:40} -> {reading}")
    assert [r.edit for r in readings[:len(train)]] == families
    assert all(r.distance < 2 for r in readings[:len(train)])
    watercolor = readings[prompts.index("make it a watercolor painting")]
    assert watercolor.edit in synthetic.FAMILIES
    own = model.read_prompt(text.encode(list(synthetic.split_paraphrases(watercolor.edit, "train"))))
    farthest = max(r.distance for r in own)
    print(f"farthest of the {len(own)} train wordings of {watercolor.edit}: {farthest:.2f}")
    assert all(r.edit == watercolor.edit for r in own) and watercolor.distance > farthest
    (empty,) = model.read_prompt(text.null(1))
    assert empty.edit == NO_EDIT and empty.distance < 0.01  # the anchor is stored in fp16


def test_the_cli_says_what_each_prompt_is_read_as(make_clip, tmp_path, capsys):
    """`edit` prints, before it edits, which known edit each prompt of a closed-vocabulary model
    is read as; a model without a vocabulary prints nothing of the kind."""
    from streamedit_core.cli import main
    src = make_clip("in.mp4", frames=8, w=32, h=32)
    assert main(["edit", str(src), "--schedule", "0: make it black and white; 4: make it a watercolor painting",
                 "-o", str(tmp_path / "out.mp4"), "--checkpoint", str(SHIPPED), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("'make it black and white' is read as grayscale (distance ")
    assert out[1].startswith("'make it a watercolor painting' is read as grayscale (distance ")
    assert main(["edit", str(src), "-p", "x", "-o", str(tmp_path / "t.mp4"), "--preset", "tiny", "--quiet"]) == 0
    assert "is read as" not in capsys.readouterr().out


def _shipped():
    from streamedit_core.model.text import TextEnsemble
    model = load_checkpoint(SHIPPED, dtype=torch.float32)
    return model, TextEnsemble.for_model(model.config)


def test_the_shipped_vocabulary_flags_foreign_prompts_and_not_unseen_wordings():
    """The shares the README reports: the threshold (set on validation wordings) flags 1 of the
    18 unseen test wordings (13 families' and 5 of "no edit"; the one flagged, "apply a mosaic
    effect", is also misread) and 17 of the 20 foreign prompts; unseen "no edit" wordings all
    read as none."""
    from streamedit_core.stream.editor import read_prompts
    model, text = _shipped()
    assert model.config.vocabulary.threshold == pytest.approx(0.4371)
    validation = [w for f in synthetic.FAMILIES for w in synthetic.split_paraphrases(f, "validation")]
    assert all(r.known for r in read_prompts(model, text, validation).values())
    test = [w for f in synthetic.FAMILIES for w in synthetic.split_paraphrases(f, "test")]
    test += synthetic.NO_EDIT_WORDINGS["test"]
    readings = read_prompts(model, text, test)
    assert [p for p, r in readings.items() if not r.known] == ["apply a mosaic effect"]
    assert all(readings[p].edit == NO_EDIT for p in synthetic.NO_EDIT_WORDINGS["test"])
    foreign = read_prompts(model, text, synthetic.FOREIGN_PROMPTS)
    caught = [p for p, r in foreign.items() if not r.known]
    print(f"foreign prompts flagged: {len(caught)} of {len(foreign)}; missed: "
          f"{[p for p in foreign if p not in caught]}")
    assert len(caught) == 17 and "make it a watercolor painting" in caught


def test_do_nothing_returns_the_source_through_the_stle():
    """A prompt read as "no edit" passes the source through: the output is the STLE's
    reconstruction of the source (the DiT and the refiner do not run), not an edit."""
    from streamedit_core.eval.metrics import psnr
    from streamedit_core.eval.runner import stle_round_trip
    from streamedit_core.stream.edit import edit_clip
    from test_golden import source_clip
    model, text = _shipped()
    clip = source_clip()  # 22 frames of real footage
    out = edit_clip(model, text, clip, "do nothing")  # a held-out wording
    reconstruction = stle_round_trip(model, clip)
    assert (out - reconstruction).abs().max() < 1e-3
    assert psnr(out, clip) == pytest.approx(psnr(reconstruction, clip), abs=0.01) and psnr(out, clip) > 35
    edited = edit_clip(model, text, clip, "make it a pencil sketch")
    assert psnr(edited, clip) < 20  # an edit still edits


def test_the_cli_warns_about_a_foreign_prompt_and_strict_refuses_it(make_clip, tmp_path, capsys):
    from streamedit_core.cli import main
    src = make_clip("in.mp4", frames=8, w=32, h=32)
    out = tmp_path / "out.mp4"
    assert main(["edit", str(src), "-p", "make it a watercolor painting", "-o", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "using the shipped demo model" in err  # no --checkpoint: the shipped model, said so
    assert "warning: 'make it a watercolor painting' is not an edit this model knows; it will be edited as " \
           "the nearest, grayscale. It knows: blur, brighter" in err and out.is_file()
    strict = tmp_path / "strict.mp4"
    assert main(["edit", str(src), "-p", "make it a watercolor painting", "-o", str(strict), "--strict"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: 'make it a watercolor painting' is not an edit this model knows")
    assert lines[-1].endswith("(--strict)") and not lines[-1].count("\n") and not strict.exists()
    assert main(["edit", str(src), "-p", "make it black and white", "-o", str(strict), "--strict", "--quiet"]) == 0


def test_info_lists_the_edits_a_model_knows(capsys):
    from streamedit_core.cli import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "a 'demo' model" in out and "edits: a closed vocabulary of 14" in out
    assert "  sketch     43 wordings: 'make it a pencil sketch'" in out
    assert "none       10 wordings (no edit: the source passes through)" in out
    assert "at least 0.4371 similar" in out
