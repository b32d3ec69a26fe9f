"""The model's closed vocabulary of edits (model/vocabulary.py): its config, the builder
(`train.refine.with_vocabulary`), the refiner reading every prompt as the nearest edit, and
`read_prompt` saying which edit that was and how far; on tiny models and on the shipped one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import make_live_tiny_model
from streamedit_core.config import PRESETS, ModelConfig, RefinerConfig, VocabularyConfig, get_preset
from streamedit_core.data import synthetic
from streamedit_core.io.checkpoint import load_checkpoint, save_checkpoint
from streamedit_core.model.vocabulary import NO_EDIT, Reading, Vocabulary
from streamedit_core.train.refine import WORDINGS_PER_EDIT, with_refiner, with_vocabulary

SMALL = RefinerConfig(width=8, film_hidden=16)
FAMILIES = ["grayscale", "hue_red", "invert"]
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "streamedit_demo.safetensors"


@pytest.fixture
def refined_model():
    """The live tiny model with a small refiner whose output layer is randomised (not identity)."""
    model = with_refiner(make_live_tiny_model(), SMALL)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in (*model.refiner.out.parameters(), *model.refiner.film[-1].parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


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
        "view": "refiner", "distance": "layer_norm_euclidean"}
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
    empty prompt; the config lists the first few train wordings; nothing else changes."""
    model = vocab_model
    vocab = model.config.vocabulary
    assert vocab.edits == (*FAMILIES, NO_EDIT) and model.vocabulary.edits == vocab.edits
    assert vocab.wordings == (*(synthetic.split_paraphrases(f, "train")[:WORDINGS_PER_EDIT] for f in FAMILIES), ())
    assert model.vocabulary.wordings("hue_red")[0] == synthetic.split_paraphrases("hue_red", "train")[0]
    assert model.vocabulary.wordings(NO_EDIT) == ()
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
    # Built again (after a refit), it is replaced, not added to; no wordings if none are asked.
    again = with_vocabulary(model, fake_text, ["sepia"], wordings_per_edit=0)
    assert again.config.vocabulary.edits == ("sepia", NO_EDIT) and again.vocabulary.anchors.shape[0] == 2
    assert again.config.vocabulary.wordings == () and again.vocabulary.wordings("sepia") == ()


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
    assert str(Reading("none", 0.0)) == "none (distance 0.00)"
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
    with pytest.raises(ValueError, match="wordings_per_edit must be >= 0"):
        with_vocabulary(refined, fake_text, ["sepia"], wordings_per_edit=-1)
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
