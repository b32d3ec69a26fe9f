"""Checkpoints: save -> load gives the same model; atomic writes; every bad file gives one clear
error naming the file and the mismatch; files of an older format load through their migration."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from streamedit_core.io import checkpoint
from streamedit_core.io.checkpoint import (CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION, load_checkpoint,
                                        read_checkpoint_config, read_checkpoint_metadata,
                                        save_checkpoint)
from streamedit_core.config import RefinerConfig, VocabularyConfig, get_preset
from streamedit_core.model import StreamEditModel

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "streamedit_demo.safetensors"


@pytest.fixture(scope="module")
def model() -> StreamEditModel:
    m = StreamEditModel.from_preset("tiny", seed=7)
    with torch.no_grad():
        m.stle.latent_mean.uniform_(-1, 1)  # trained statistics must survive the round trip
        m.stle.latent_std.uniform_(0.5, 2)
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(model, path, extra_metadata={"step": 1200, "note": "unit test"})
    return path


def write_raw(path: Path, tensors: dict, config_json: str | None, version: str = str(FORMAT_VERSION)) -> Path:
    metadata = {FORMAT_KEY: version}
    if config_json is not None:
        metadata[CONFIG_KEY] = config_json
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_round_trip(model, saved):
    assert [p.name for p in saved.parent.iterdir()] == ["tiny.safetensors"]  # no temp left
    loaded = load_checkpoint(saved)
    assert loaded.config == model.config and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    frames = torch.rand(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.stle.encode(frames), model.stle.encode(frames),
                                   atol=0, rtol=0)


def test_metadata_and_config_from_header(model, saved):
    assert read_checkpoint_config(saved) == model.config
    meta = read_checkpoint_metadata(saved)
    assert meta["note"] == "unit test" and json.loads(meta["step"]) == 1200
    assert meta[FORMAT_KEY] == str(FORMAT_VERSION)


def test_dtype_and_device(saved):
    loaded = load_checkpoint(saved, device="cpu", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    assert loaded.stle.latent_std.dtype == torch.bfloat16
    assert not any(t.is_meta for t in loaded.state_dict().values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_onto_cuda(model, saved):
    loaded = load_checkpoint(saved, device="cuda", dtype=torch.float16)
    assert loaded.device.type == "cuda" and loaded.dtype == torch.float16
    torch.testing.assert_close(loaded.stle.latent_mean.float().cpu(),
                               model.stle.latent_mean, atol=1e-3, rtol=1e-3)


def test_failed_save_keeps_the_old_file(model, saved, tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(saved.read_bytes())

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, target)
    assert target.read_bytes() == saved.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_save_errors(model, tmp_path):
    with pytest.raises(ValueError, match=r"model.pt' must end in .safetensors"):
        save_checkpoint(model, tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="output directory does not exist: .*nowhere"):
        save_checkpoint(model, tmp_path / "nowhere" / "m.safetensors")
    with pytest.raises(TypeError, match="expects a StreamEditModel, got Linear"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="extra_metadata key 'streamedit_config'"):
        save_checkpoint(model, tmp_path / "m.safetensors", {CONFIG_KEY: "{}"})
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    for fn in (load_checkpoint, read_checkpoint_config):
        with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.safetensors"):
            fn(tmp_path / "absent.safetensors")


def test_pickle_files_are_refused(model, tmp_path):
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)  # zip-based torch format
    ckpt = tmp_path / "model.ckpt"
    with open(ckpt, "wb") as f:
        pickle.dump({"a": 1}, f)  # plain pickle
    for path in (pt, ckpt):
        with pytest.raises(ValueError, match=f"{path.name}' looks like a PyTorch pickle checkpoint; "
                                             "StreamEdit loads safetensors only"):
            load_checkpoint(path)


def test_truncated_and_corrupt(saved, tmp_path):
    data = saved.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "header_only.safetensors": data[:100],
        "tiny.safetensors": data[:5],
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + b"x" * 64,
        "empty.safetensors": b"",
        "trailing.safetensors": data + b"extra",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for fn in (load_checkpoint, read_checkpoint_config):
            with pytest.raises(ValueError, match=f"{name}' is not a valid safetensors file "
                                                 r"\(truncated\?\)"):
                fn(path)


def test_not_a_streamedit_checkpoint(tmp_path):
    path = write_raw(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, None)
    with pytest.raises(ValueError, match="other.safetensors' is not a StreamEdit checkpoint: "
                                         "its safetensors metadata has no 'streamedit_config'"):
        load_checkpoint(path)


def test_newer_format_and_bad_config(model, tmp_path):
    sd = model.state_dict()
    path = write_raw(tmp_path / "new.safetensors", sd, model.config.to_json(), version="99")
    with pytest.raises(ValueError, match="has checkpoint format 99, newer than"):
        load_checkpoint(path)
    bad = json.loads(model.config.to_json())
    bad["stle"]["wings"] = 2
    path = write_raw(tmp_path / "bad.safetensors", sd, json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.safetensors': invalid model config .*'wings'"):
        read_checkpoint_config(path)


def test_tensor_mismatches(model, tmp_path):
    sd = dict(model.state_dict())
    cfg = model.config.to_json()
    where = "does not match its config"

    missing = dict(sd)
    del missing["stle.latent_std"]
    path = write_raw(tmp_path / "missing.safetensors", missing, cfg)
    with pytest.raises(ValueError, match=f"missing.safetensors' {where}: missing tensor "
                                         r"'stle.latent_std' \(shape \[12\]\)"):
        load_checkpoint(path)

    path = write_raw(tmp_path / "extra.safetensors", {**sd, "dit.bonus": torch.zeros(3)}, cfg)
    with pytest.raises(ValueError, match=f"extra.safetensors' {where}: unexpected tensor 'dit.bonus'"):
        load_checkpoint(path)

    name = "stle.encoder.conv_in.spatial.weight"
    reshaped = {**sd, name: torch.zeros(4, 3, 1, 3, 3)}
    path = write_raw(tmp_path / "shape.safetensors", reshaped, cfg)
    with pytest.raises(ValueError, match=rf"{where}: tensor '{name}' has shape \[4, 3, 1, 3, 3\], "
                                         rf"expected \[8, 3, 1, 3, 3\]"):
        load_checkpoint(path)

    # the tiny weights under the demo config: named at the first mismatching tensor
    path = write_raw(tmp_path / "wrong_config.safetensors", sd, get_preset("demo").to_json())
    with pytest.raises(ValueError, match=f"wrong_config.safetensors' {where}: "):
        load_checkpoint(path)

    ints = {**sd, "stle.latent_std": torch.zeros(12, dtype=torch.int32)}
    path = write_raw(tmp_path / "ints.safetensors", ints, cfg)
    with pytest.raises(ValueError, match="'stle.latent_std' has dtype I32, expected torch.float32"):
        load_checkpoint(path)


def test_header_size_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors header length of 128 mod 256 makes the first byte 0x80, the pickle protocol
    opcode; such a file must still load (seen in training exports)."""
    import struct
    model = StreamEditModel.from_preset("tiny", seed=0)
    for pad in range(256):  # find metadata that puts the header length at 128 mod 256
        path = tmp_path / "m.safetensors"
        save_checkpoint(model, path, extra_metadata={"pad": " " * pad})
        head = path.read_bytes()[:8]
        if head[:1] == b"\x80":
            break
    assert head[:1] == b"\x80" and struct.unpack("<Q", head)[0] % 256 == 128
    loaded = load_checkpoint(path)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_saved_files_get_ordinary_permissions(tmp_path):
    """The atomic temp-file route must not leave checkpoints readable by their owner only."""
    import os
    path = tmp_path / "m.safetensors"
    save_checkpoint(StreamEditModel.from_preset("tiny", seed=0), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --- Format 1: the prompt anchors were the refiner's ------------------------------------------

def _with_vocabulary(edits=("warm", "sepia", "none")) -> StreamEditModel:
    """The tiny model with a refiner and a vocabulary of random anchors (format 1 stored no wordings)."""
    config = get_preset("tiny").replace(refiner=RefinerConfig(width=4, film_hidden=8),
                                        vocabulary=VocabularyConfig(edits=edits))
    model = StreamEditModel(config).eval()
    with torch.no_grad():
        model.vocabulary.anchors.normal_(generator=torch.Generator().manual_seed(5))
    return model


def _format_1(model: StreamEditModel, path: Path, edit=None) -> Path:
    """`model` written as format 1 wrote it: the vocabulary's edits as the config's
    refiner.anchors and its anchors as the tensor refiner.anchors; `edit(config dict)` may change
    the config first."""
    config = json.loads(model.config.to_json())
    edits = config.pop("vocabulary")["edits"]
    config["refiner"]["anchors"] = edits
    tensors = dict(model.state_dict())
    if edits:
        tensors["refiner.anchors"] = tensors.pop("vocabulary.anchors")
    if edit is not None:
        edit(config)
    return write_raw(path, tensors, json.dumps(config), version="1")


def test_format_1_prompt_anchors_load_as_the_vocabulary(tmp_path):
    model = _with_vocabulary()
    old = _format_1(model, tmp_path / "old.safetensors")
    assert json.loads(read_checkpoint_metadata(old)[CONFIG_KEY])["refiner"]["anchors"] == ["warm", "sepia", "none"]
    assert read_checkpoint_config(old) == model.config
    loaded = load_checkpoint(old)
    assert loaded.config == model.config and loaded.config.vocabulary.wordings == ()
    a, b = loaded.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Saved again, it is format 2: the vocabulary under its own name.
    new = tmp_path / "new.safetensors"
    save_checkpoint(loaded, new)
    assert read_checkpoint_metadata(new)[FORMAT_KEY] == str(FORMAT_VERSION) == "2"
    with safe_open(str(new), framework="pt") as f:
        assert "vocabulary.anchors" in f.keys() and "refiner.anchors" not in f.keys()
    assert json.loads(read_checkpoint_metadata(new)[CONFIG_KEY])["vocabulary"]["edits"] == ["warm", "sepia", "none"]
    assert torch.equal(load_checkpoint(new).vocabulary.anchors, model.vocabulary.anchors)
    # A format-1 refiner without anchors: no vocabulary.
    plain = StreamEditModel(model.config.replace(vocabulary=VocabularyConfig())).eval()
    loaded = load_checkpoint(_format_1(plain, tmp_path / "plain.safetensors"))
    assert loaded.vocabulary is None and loaded.config == plain.config


def test_format_1_errors(tmp_path):
    model = _with_vocabulary()

    def both(config):
        config["vocabulary"] = {"edits": ["warm"]}

    with pytest.raises(ValueError, match="both.safetensors': invalid model config .*has both refiner.anchors "
                                         r"\(format 1\) and a vocabulary \(format 2\)"):
        load_checkpoint(_format_1(model, tmp_path / "both.safetensors", both))
    twice = _with_vocabulary(("warm", "warm2"))

    def repeated(config):
        config["refiner"]["anchors"] = ["warm", "warm"]

    with pytest.raises(ValueError, match="twice.safetensors': invalid model config .*distinct non-empty names"):
        read_checkpoint_config(_format_1(twice, tmp_path / "twice.safetensors", repeated))
    # The anchors tensor is looked for under its format-1 name, and named so when missing.
    path = _format_1(model, tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "refiner.anchors"}
        config = f.metadata()[CONFIG_KEY]
    missing = write_raw(tmp_path / "missing.safetensors", tensors, config, version="1")
    with pytest.raises(ValueError, match=r"missing tensor 'refiner.anchors' \(shape \[3, 80\]\)"):
        load_checkpoint(missing)
    # Format 2 has no refiner.anchors: a file that says 2 and has them is not one.
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mislabelled = write_raw(tmp_path / "mislabelled.safetensors", tensors, config)
    with pytest.raises(ValueError, match=r"invalid model config .*unknown keys \['anchors'\] for RefinerConfig"):
        load_checkpoint(mislabelled)


def test_the_shipped_file_is_format_2_and_its_format_1_form_migrates(tmp_path):
    """The shipped demo model is format 2 (its vocabulary: 14 edits, their wordings, a threshold).
    Written as format 1 wrote it, it loads with the same weights and anchors, so files saved by
    older code keep working."""
    meta = read_checkpoint_metadata(SHIPPED)
    assert meta[FORMAT_KEY] == "2" and "anchors" not in json.loads(meta[CONFIG_KEY])["refiner"]
    model = load_checkpoint(SHIPPED)  # as stored: fp16
    vocab = model.config.vocabulary
    assert len(vocab.edits) == 14 and vocab.edits[-1] == "none" and vocab.wordings and vocab.threshold > 0
    assert (vocab.view, vocab.distance) == ("refiner", "layer_norm_euclidean")
    assert model.config == read_checkpoint_config(SHIPPED)
    with safe_open(str(SHIPPED), framework="pt") as f:
        stored = f.get_tensor("vocabulary.anchors")
    assert stored.dtype == torch.float16 and torch.equal(model.vocabulary.anchors, stored)
    old = _format_1(model, tmp_path / "old.safetensors")
    migrated = load_checkpoint(old)
    assert migrated.config.vocabulary.edits == vocab.edits and migrated.config.vocabulary.wordings == ()
    a, b = migrated.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
