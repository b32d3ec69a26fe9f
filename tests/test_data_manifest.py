"""train.data: JSONL manifests of mp4 pairs (bad rows reported and skipped), latent shards,
and the batch order that makes runs independent of the rank / accumulation split."""
import json
import logging
import pickle

import pytest
import torch

from streamedit_core.train.data import (LatentShardDataset, ManifestDataset, encode_latent_shards,
                                        step_positions)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_manifest_reads_cropped_clip_pairs(tmp_path, make_clip):
    make_clip("a.mp4", frames=12, w=48, h=40)
    make_clip("b.mp4", frames=12, w=48, h=40)
    path = _manifest(tmp_path, [{"source": "a.mp4", "target": "b.mp4", "instruction": "make it sepia"}])
    ds = ManifestDataset(path, frames=8, size=32, seed=0)
    item = ds[0]
    assert item["source"].shape == item["target"].shape == (3, 8, 32, 32)
    assert item["prompt"] == "make it sepia" and ds.all_prompts() == ["make it sepia"]
    assert 0 <= float(item["source"].min()) and float(item["source"].max()) <= 1
    torch.testing.assert_close(ds[3]["source"], ds[3]["source"])  # a function of the position


def test_bad_rows_are_reported_with_line_and_path_and_skipped(tmp_path, make_clip, caplog):
    make_clip("a.mp4", frames=8)
    make_clip("b.mp4", frames=8)
    make_clip("short.mp4", frames=4)
    make_clip("wide.mp4", frames=8, w=48)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    rows = [{"source": "a.mp4", "target": "b.mp4", "instruction": "blur it"},        # 1 ok
            {"source": "a.mp4", "target": "gone.mp4", "instruction": "x"},           # 2 missing
            "{not json",                                                             # 3
            {"source": "a.mp4", "target": "b.mp4"},                                  # 4 no instruction
            {"source": "a.mp4", "target": "short.mp4", "instruction": "x"},          # 5 length
            {"source": "a.mp4", "target": "wide.mp4", "instruction": "x"},           # 6 size
            {"source": "junk.mp4", "target": "b.mp4", "instruction": "x"}]           # 7 unreadable
    path = _manifest(tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        ds = ManifestDataset(path, frames=8, size=32)
    assert len(ds) == 4 and ds.skipped == 3
    text = "\n".join(ds.bad_rows)
    assert ":2: video not found" in text and "gone.mp4" in text
    assert ":3: not valid JSON" in text and ":4: needs the keys" in text
    # row-level problems found at read time: named, counted, skipped; the item still comes back
    errors = {}
    for i in range(len(ds)):
        try:
            ds.load(i, __import__("random").Random(0))
        except ValueError as e:
            errors[ds.rows[i][0]] = str(e)
    assert "row 5" in errors[5] and "a.mp4 has 8 frames but target" in errors[5] and "short.mp4 has 4" in errors[5]
    assert "row 6" in errors[6] and "48x32" in errors[6]
    assert "row 7" in errors[7] and "junk.mp4" in errors[7]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        items = [ds[p] for p in range(8)]
    assert all(it["prompt"] == "blur it" for it in items)  # only row 1 is usable
    assert ds.skipped > 3 and "skipped" in caplog.text and "row" in caplog.text


def test_manifest_without_usable_rows_is_an_error(tmp_path):
    path = _manifest(tmp_path, [{"source": "x.mp4", "target": "y.mp4", "instruction": ""}])
    with pytest.raises(ValueError, match=r"no usable rows.*manifest.jsonl:1: video not found"):
        ManifestDataset(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        ManifestDataset(tmp_path / "nope.jsonl")


def test_latent_shards_round_trip(tmp_path, tiny_model):
    from streamedit_core.data.synthetic import SyntheticEditDataset
    ds = SyntheticEditDataset(frames=8, size=32, length=3)
    encode_latent_shards(tiny_model.stle, ds, tmp_path / "lat", count=3, shard_size=2, batch=2)
    assert len(list((tmp_path / "lat").glob("shard_*.safetensors"))) == 2
    shards = LatentShardDataset(tmp_path / "lat")
    assert len(shards) == 3
    with torch.no_grad():
        want = torch.cat([tiny_model.stle.encode(ds[i]["target"][None]) for i in range(3)])
    got = torch.stack([shards.row(i)["target_latents"] for i in range(3)])  # rows in position order
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert shards.prompts == [ds[i]["prompt"] for i in range(3)]
    item = shards[0]  # items follow the run's permutation of the rows
    row = shards.prompts.index(item["prompt"]) if item["prompt"] else None
    assert item["target_latents"].shape == (12, 2, 4, 4)
    if row is not None:
        torch.testing.assert_close(item["target_latents"], want[row], atol=1e-5, rtol=1e-5)
    # a spawned loader worker gets a pickled copy: it opens its own shard handles
    copy = pickle.loads(pickle.dumps(shards))
    torch.testing.assert_close(copy.row(2)["target_latents"], want[2], atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="no latent shards"):
        LatentShardDataset(tmp_path)
    # DiT training reads them instead of running the STLE
    from streamedit_core.train.config import DataConfig, TrainConfig
    from streamedit_core.train.trainer import Trainer
    cfg = TrainConfig(text="random", data=DataConfig(kind="latents", path=str(tmp_path / "lat")), steps=1,
                      global_batch=2, out_dir=str(tmp_path / "run"), progress=False)
    assert Trainer(cfg).train_step()["loss"] > 0


def test_step_positions_do_not_depend_on_the_split():
    one = step_positions(3, 8, 8, 0, 0, 1)
    two = sorted(p for r in range(2) for m in range(2) for p in step_positions(3, 8, 2, m, r, 2))
    assert one == two == list(range(24, 32))
