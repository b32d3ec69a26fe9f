"""The repo is a ComfyUI custom-node package; importing it outside ComfyUI must be harmless."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.util, sys
assert importlib.util.find_spec("comfy_api") is None, "ComfyUI is on sys.path"
spec = importlib.util.spec_from_file_location("comfyui_streamedit", sys.argv[1] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[1]])
package = importlib.util.module_from_spec(spec)
sys.modules["comfyui_streamedit"] = package
spec.loader.exec_module(package)
print(hasattr(package, "comfy_entrypoint"), "torch" in sys.modules)
"""


def test_package_imports_outside_comfyui_without_registering_or_importing_torch():
    # A fresh interpreter: this test process may already have imported torch.
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
