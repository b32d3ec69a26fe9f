"""The map of streamedit_core (docs/internals.md) holds, and importing it has no side effects.

- Rooms: each subpackage imports only the rooms below it (`ALLOWED`); in particular model/ never
  imports stream/, train/ or eval/, stream/ never train/ or eval/, eval/ never train/; nothing
  climbs out of the package (the nodes, ComfyUI); and no module imports itself back through
  others (no cycles). Lazy imports inside functions count: they are edges too.
- The source of every module names none of the libraries the core must not use (ComfyUI,
  torchvision, open_clip, timm, PIL), and importing every module in a fresh interpreter loads
  none of them, initialises no CUDA, loads no kernel compiler and writes no file. An import of
  PIL that a dependency makes is reported as a warning, not a failure.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "streamedit_core"
# ComfyUI's own packages and modules, then the libraries STYLE.md rules out.
COMFY = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "nodes")
FORBIDDEN = COMFY + ("torchvision", "open_clip", "timm", "PIL")
TOLERATED_FROM_DEPENDENCIES = ("PIL",)  # e.g. an image library pulling in Pillow: reported only
# loaded on first use, never at import: the kernel compiler, the ComfyUI client's WebSocket
NOT_AT_IMPORT = ("cupy", "websocket")


def core_modules() -> list[str]:
    """Every module of the package, by file (`__main__` runs the CLI when imported: left out)."""
    names = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# Which rooms each room may import (besides itself). Top-level modules are rooms of their own.
_BASE = {"config", "types"}
ALLOWED = {
    "config": set(), "types": set(),
    "model": _BASE,
    "io": _BASE | {"model"},
    "data": _BASE | {"io"},
    "stream": _BASE | {"model", "io"},
    "eval": _BASE | {"model", "io", "data", "stream"},
    "train": _BASE | {"model", "io", "data", "stream", "eval"},
    "live": _BASE | {"model", "io", "stream"},
    "bench": _BASE | {"model", "io", "data", "stream", "eval", "train", "live"},
    "cli": _BASE | {"model", "io", "data", "stream", "eval", "train", "live", "bench"},
    "__main__": {"cli"},
    "": set(),  # the package's __init__
}


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (dotted, relative to `package`; "" is its
    __init__), from the source: top-level and lazy imports, relative and absolute. A name that
    climbs out of the package is recorded as "<outside>.NAME"."""
    top = package.name
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        here = [p for p in here if p]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level - 1 > len(here):
                    deps.add(f"<outside>.{node.module}")
                    continue
                target = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == top:
                target = node.module.split(".")[1:]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == top:
                        deps.add(".".join(alias.name.split(".")[1:]))
                continue
            else:
                continue
            base = ".".join(target)
            for alias in node.names:  # `from . import x`: x may be a module
                sub = f"{base}.{alias.name}" if base else alias.name
                deps.add(sub if sub in modules else base)
        graph[name] = deps - {name}
    return graph


def room(module: str) -> str:
    return module.split(".")[0]


def rule_violations(package: Path, allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """Every import that breaks the map: a room importing a room it may not, a climb out of the
    package, an unknown room, and each import cycle (once, as the path that closes it)."""
    graph = import_graph(package)
    found = []
    for module, deps in sorted(graph.items()):
        if room(module) not in allowed:
            found.append(f"{module}: room {room(module)!r} is not on the map (tests/test_imports.py ALLOWED)")
            continue
        for dep in sorted(deps):
            if dep.startswith("<outside>"):
                found.append(f"{module} imports {dep[len('<outside>.'):]} from outside the package")
            elif room(dep) != room(module) and room(dep) not in allowed[room(module)]:
                found.append(f"{module} imports {dep}: {room(module)}/ may not import {room(dep)}/")
    seen_cycles = set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph.get(node, ())):
                if dep == start:
                    cycle = frozenset(path)
                    if cycle not in seen_cycles:
                        seen_cycles.add(cycle)
                        found.append("import cycle: " + " -> ".join(path + [start]))
                elif dep not in path and dep > start:  # each cycle from its smallest module
                    stack.append((dep, path + [dep]))
    return found


def test_the_package_keeps_to_its_map():
    assert rule_violations(CORE) == []


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    # the layout before issue 47: the benchmark read the training data while the refiner's
    # training read the eval runner (rooms in a cycle), and the attention backends and the DSA
    # op imported each other
    ({"eval/benchmark.py": "from ..train import synthetic\n",
      "train/refine.py": "from ..eval.runner import edit_stream\n", "train/synthetic.py": ""},
     ["eval.benchmark imports train.synthetic: eval/ may not import train/"]),
    ({"model/attention.py": "from . import dsa\n",
      "model/dsa.py": "def f():\n    from .attention import sdpa\n"},
     ["import cycle: model.attention -> model.dsa -> model.attention"]),
    ({"model/dit.py": "from ..stream.buffer import StreamState\n", "stream/buffer.py": ""},
     ["model.dit imports stream.buffer: model/ may not import stream/"]),
    ({"stream/editor.py": "def f():\n    from ..train import losses\n", "train/losses.py": ""},
     ["stream.editor imports train.losses: stream/ may not import train/"]),
    ({"stream/editor.py": "from ...nodes import common\n"},
     ["stream.editor imports nodes from outside the package"]),
    ({"model/x.py": "import streamedit_core.eval.metrics\n", "eval/metrics.py": ""},
     ["model.x imports eval.metrics: model/ may not import eval/"]),
])
def test_the_rule_check_catches_the_old_violations(tmp_path, files, expected):
    package = _write_tree(tmp_path / "streamedit_core", {"__init__.py": "", **files})
    assert rule_violations(package) == expected


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
    assert "streamedit_core.stream.editor" in modules and "streamedit_core.eval.metrics" in modules
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
