"""Importing any streamedit_core module has no side effects and pulls in none of the libraries
the core must not use (ComfyUI, torchvision, open_clip, timm, PIL).

Two checks: the source of every module (lazy imports inside functions included) names none of
them, and importing every module in a fresh interpreter loads none of them, initialises no CUDA,
loads no kernel compiler and writes no file. An import of PIL that a dependency makes is
reported as a warning, not a failure: only our own imports are ours to fix.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "streamedit_core"
# ComfyUI's own packages and modules, then the libraries STYLE.md rules out.
COMFY = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "nodes")
FORBIDDEN = COMFY + ("torchvision", "open_clip", "timm", "PIL")
TOLERATED_FROM_DEPENDENCIES = ("PIL",)  # e.g. an image library pulling in Pillow: reported only
NOT_AT_IMPORT = ("cupy",)  # the kernel compiler: loaded on first use, never at import


def core_modules() -> list[str]:
    """Every module of the package, by file (`__main__` runs the CLI when imported: left out)."""
    names = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_no_module_source_imports_a_forbidden_library():
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in FORBIDDEN]
    assert not found, found


# Runs in a fresh interpreter: a meta-path hook notes, for every forbidden top-level module
# imported, which file asked for it (the first frame outside the import machinery).
_PROBE = r"""
import importlib, json, os, sys, traceback

FORBIDDEN, WATCH, modules = json.loads(sys.argv[1])
seen = {}

class Spy:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if (top in FORBIDDEN or top in WATCH) and top not in seen:
            frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
            ours = [f"{f.filename}:{f.lineno}" for f in frames if "streamedit_core" in f.filename]
            seen[top] = {"by": f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?",
                         "ours": ours}
        return None

sys.meta_path.insert(0, Spy())
for m in modules:
    importlib.import_module(m)
import torch
print(json.dumps({"seen": seen, "cuda_initialized": torch.cuda.is_initialized(),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN + WATCH)}))
"""


def test_importing_every_module_has_no_side_effects_and_no_forbidden_library(tmp_path):
    modules = core_modules()
    assert "streamedit_core.pipeline" in modules and "streamedit_core.eval.metrics" in modules
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(home),
           "XDG_CACHE_HOME": str(home / ".cache")}
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([FORBIDDEN, NOT_AT_IMPORT, modules])],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["cuda_initialized"] is False
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [], f"importing streamedit_core wrote files: {written}"
    loaded = {m.split(".")[0] for m in report["loaded"]}
    assert not loaded & set(NOT_AT_IMPORT), report["loaded"]
    # who asked for each forbidden module that is now in sys.modules
    who = {m: report["seen"].get(m, {"by": "?", "ours": []}) for m in loaded}
    ours = {m: s for m, s in who.items() if s["by"].startswith(str(CORE))}
    assert not ours, f"our own modules import {ours}"
    bad = {m: s for m, s in who.items() if m not in TOLERATED_FROM_DEPENDENCIES}
    assert not bad, f"importing streamedit_core loads {bad} (through a dependency)"
    for m, s in who.items():  # tolerated: a dependency's choice, reported for the record
        warnings.warn(f"importing streamedit_core loads {m} through a dependency ({s['by']}, "
                      f"from {s['ours'][-1] if s['ours'] else '?'})")
