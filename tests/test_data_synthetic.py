"""train.synthetic: edit families, paraphrases, photos under motion, splits, the dataset."""
import pytest
import torch

from streamedit_core.data import synthetic

# The family of each train-split wording (wordings are unique across families).
TRAIN_FAMILY = {p: f for f in synthetic.FAMILIES.values() for p in synthetic.split_paraphrases(f.name, "train")}


def test_families_are_many_and_well_formed():
    assert len(synthetic.FAMILIES) >= 10
    clip = synthetic.photo_clip("astronaut", frames=3, size=32, seed=0)
    for name, fam in synthetic.FAMILIES.items():
        assert len(set(fam.paraphrases)) >= 5 and all(p.strip() for p in fam.paraphrases), name
        out = fam.apply(clip)
        assert out.shape == clip.shape and out.dtype == torch.float32, name
        assert 0 <= float(out.min()) and float(out.max()) <= 1, name
        assert float((out - clip).abs().mean()) > 0.02, f"{name} barely changes the clip"
        # pure per-frame function: editing frame by frame equals editing the clip
        torch.testing.assert_close(torch.cat([fam.apply(clip[i:i + 1]) for i in range(3)]), out)


def test_no_prompt_is_shared_between_families():
    prompts = [p.lower() for f in synthetic.FAMILIES.values()
               for p in set(f.wordings())]
    assert len(prompts) == len(set(prompts))


def test_splits_partition_photos_and_paraphrases_deterministically():
    photos = [synthetic.split_photos(s) for s in synthetic.SPLITS]
    assert all(photos) and sorted(sum(map(list, photos), [])) == sorted(synthetic.PHOTOS)
    for name, fam in synthetic.FAMILIES.items():
        parts = [synthetic.split_paraphrases(name, s) for s in synthetic.SPLITS]
        assert all(parts), name
        train, held_out = parts[0], parts[1] + parts[2]
        assert sorted(held_out + tuple(w for w in train if w in fam.paraphrases)) == sorted(fam.paraphrases)
        # the extra wordings only ever train: validation and test stay unseen wording
        assert set(fam.train_only) <= set(train) <= set(fam.wordings())
        assert not set(train) & set(held_out) and len(set(train)) == len(train), name
    assert synthetic.split_photos("test") == synthetic.split_photos("test")


def test_templated_wordings_share_frames_across_families_but_not_held_out_wording():
    held_out = {w for f in synthetic.FAMILIES for s in ("validation", "test")
                for w in synthetic.split_paraphrases(f, s)}
    for name, fam in synthetic.FAMILIES.items():
        train = synthetic.split_paraphrases(name, "train")
        by_hand = fam.paraphrases + fam.train_only
        kept = [w for w in fam.templated() if w in train and w not in by_hand]
        own_held_out = synthetic.split_paraphrases(name, "test") + synthetic.split_paraphrases(name, "validation")
        assert len(kept) >= len(synthetic.LOOK_TEMPLATES), name  # most of them survive the filter
        assert not held_out & set(train), name  # no family trains on any held-out wording
        for w in kept:  # ... nor on a templated near copy of its own
            for h in own_held_out:
                assert synthetic.word_edits(w, h) >= synthetic.HELD_OUT_MIN_EDITS, (w, h)
    # "make it darker" is the darker family's test wording: the frame "make it {}" with the look
    # "darker" is dropped, as are its one-word variants.
    assert "make it darker" in synthetic.split_paraphrases("darker", "test")
    assert "make it darker" in synthetic.FAMILIES["darker"].templated()
    assert "make it dimmer" in synthetic.FAMILIES["darker"].templated()
    assert "make it dimmer" in synthetic.FAMILIES["darker"].train_only  # written by hand, kept
    assert "make it dim" not in synthetic.split_paraphrases("darker", "train")
    # one frame asks for every family: the words that name the edit tell them apart
    for frame in synthetic.LOOK_TEMPLATES:
        asks = [f for f, fam in synthetic.FAMILIES.items()
                if any(frame.format(look) in synthetic.split_paraphrases(f, "train") for look in fam.looks)]
        assert len(asks) >= 10, frame
    assert synthetic.word_edits("make it darker", "make the video darker") == 2
    assert synthetic.word_edits("a b c", "a b c") == 0


def test_split_errors_name_the_value():
    with pytest.raises(ValueError, match="'valid'"):
        synthetic.split_photos("valid")
    with pytest.raises(ValueError, match="'watercolour'"):
        synthetic.split_paraphrases("watercolour", "train")
    with pytest.raises(ValueError, match="'lena'"):
        synthetic.load_photo("lena")
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        synthetic.FAMILIES["invert"].apply(torch.zeros(2, 3, 8, 8))


def test_photo_clip_moves_and_is_seeded():
    a = synthetic.photo_clip("coffee", frames=6, size=32, seed=3)
    assert a.shape == (6, 32, 32, 3)
    torch.testing.assert_close(a, synthetic.photo_clip("coffee", frames=6, size=32, seed=3))
    assert float((a[1:] - a[:-1]).abs().mean()) > 1e-3  # camera motion / moving patches
    assert float((a - synthetic.photo_clip("coffee", frames=6, size=32, seed=4)).abs().mean()) > 1e-2


def test_dataset_items_are_pairs_of_their_prompt():
    ds = synthetic.SyntheticEditDataset("train", frames=4, size=32, seed=1, identity_fraction=0.3, length=40)
    seen_identity = False
    for i in range(40):
        item = ds[i]
        assert item["source"].shape == (3, 4, 32, 32)
        src, tgt = (item[k].permute(1, 2, 3, 0) for k in ("source", "target"))
        if item["prompt"] == "":
            seen_identity = True
            torch.testing.assert_close(src, tgt)
        else:
            assert item["prompt"] in synthetic.split_paraphrases(TRAIN_FAMILY[item["prompt"]].name, "train")
            torch.testing.assert_close(TRAIN_FAMILY[item["prompt"]].apply(src), tgt)
    assert seen_identity
    torch.testing.assert_close(ds[7]["target"], ds[7 + 40]["target"])  # length bounds the index space
    assert "" in ds.all_prompts()


def test_underexposed_clips_are_dimmed_before_the_edit():
    kw = dict(frames=4, size=32, seed=1, identity_fraction=0.3, length=40)
    plain = synthetic.SyntheticEditDataset("train", **kw)
    dim = synthetic.SyntheticEditDataset("train", underexposed_fraction=0.5, **kw)
    lo, hi = synthetic.UNDEREXPOSED_GAIN
    gains = []
    for i in range(40):
        a, b = plain[i], dim[i]
        assert a["prompt"] == b["prompt"]  # the fraction changes exposure only
        if torch.equal(a["source"], b["source"]):  # not dimmed: the very same pair
            torch.testing.assert_close(a["target"], b["target"])
            continue
        gain = float(b["source"].sum() / a["source"].sum())
        torch.testing.assert_close(b["source"], a["source"] * gain)  # one gain for the whole clip
        gains.append(gain)
        src, tgt = (b[k].permute(1, 2, 3, 0) for k in ("source", "target"))
        expected = src if b["prompt"] == "" else TRAIN_FAMILY[b["prompt"]].apply(src)
        torch.testing.assert_close(tgt, expected)  # the edit is made on the dimmed clip
    assert 10 <= len(gains) <= 30 and all(lo - 1e-4 <= g <= hi for g in gains)
    assert min(gains) < 0.3  # the range reaches far below the photos' exposure
    with pytest.raises(ValueError, match=r"underexposed_fraction must be in \[0, 1\], got 1.5"):
        synthetic.SyntheticEditDataset("train", underexposed_fraction=1.5)
    with pytest.raises(ValueError, match=r"underexposure gain must be in \(0, 1\]"):
        synthetic.underexpose(torch.ones(1, 2, 2, 3), 0.0)


def test_underexposed_families_limit_which_edits_see_dark_clips():
    from streamedit_core.train.config import TrainConfig
    from streamedit_core.train.trainer import build_dataset
    colour = ("warm", "cool")
    cfg = TrainConfig.from_dict({"seed": 1, "data": {
        "frames": 4, "size": 32, "length": 120, "underexposed_fraction": 0.6,
        "underexposed_families": list(colour)}})  # JSON gives a list
    assert cfg.data.underexposed_families == colour
    plain = synthetic.SyntheticEditDataset("train", frames=4, size=32, seed=1, length=120)
    dim, dimmed = build_dataset(cfg), set()
    for i in range(120):
        a, b = plain[i], dim[i]
        if not torch.equal(a["source"], b["source"]):
            dimmed.add(TRAIN_FAMILY[b["prompt"]].name if b["prompt"] else "no edit")
    assert dimmed == {"warm", "cool", "no edit"}  # clips with no edit stay in the dark share
    with pytest.raises(ValueError, match="unknown edit family 'teal'"):
        synthetic.SyntheticEditDataset("train", underexposed_fraction=0.3, underexposed_families=("teal",))


def test_blur_is_the_same_in_pixels_at_every_frame_size():
    """The DiT trains at 32 px and is scored at 64: an edit that scales with the frame would be
    learnt at the wrong strength (it was, until 2026-12-01)."""
    spreads = []
    for size in (32, 64):
        dot = torch.zeros(1, size, size, 3)
        dot[0, size // 2, size // 2] = 1.0
        row = synthetic.blur(dot)[0, size // 2, :, 0]  # [W] the blurred dot's profile
        x = torch.arange(size, dtype=torch.float32) - size // 2
        spreads.append(float((row * x ** 2).sum() / row.sum()) ** 0.5)
    assert spreads[0] == pytest.approx(spreads[1], abs=1e-4)
    assert spreads[0] == pytest.approx(synthetic.BLUR_SIGMA, rel=0.1)


def test_filler_words_are_common_words_that_no_wording_uses():
    from streamedit_core.data.fillers import filler_variants, filler_words

    words = filler_words()
    assert len(words) > 5000 and len(set(words)) == len(words)
    assert all(w.isalpha() and w.islower() for w in words)
    assert not synthetic.wording_words() & set(words)  # held-out wordings stay unseen ("deep", "mosaic", ...)
    assert {"deep", "mosaic", "red", "green", "darkness"}.isdisjoint(words)
    v = filler_variants(["make it sepia", "", "make it sepia"], 4, seed=1)
    assert list(v) == ["make it sepia"] and len(v["make it sepia"]) == 4  # the null prompt gets none
    for variant in v["make it sepia"]:
        parts = variant.split()
        extra = [w for w in parts if w not in ("make", "it", "sepia")]
        assert len(parts) == 4 and len(extra) == 1 and extra[0] in words
        assert [w for w in parts if w != extra[0]] == ["make", "it", "sepia"]  # order kept
    assert filler_variants(["make it sepia"], 4, seed=1) == v
    assert filler_variants(["make it sepia"], 4, seed=2) != v
    with pytest.raises(ValueError, match="filler variants per prompt must be >= 1"):
        filler_variants(["make it sepia"], 0)
