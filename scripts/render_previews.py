"""Render workflows/<name>.png: each workflow as the real ComfyUI web UI shows it (headless Chromium).

    PYTHONPATH=. .venv/bin/python scripts/render_previews.py [--chromium chromium]

Starts a throw-away ComfyUI with our nodes plus a one-file web extension (only in that
throw-away base directory, never shipped) that loads the workflow named in the page's URL,
then screenshots the page. Needs `apt-get install -y chromium`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from streamedit_core.bench.comfyui import REPO, ComfyServer

LOADER = "streamedit_preview_loader"
LOADER_JS = """
import { app } from "../../scripts/app.js";
app.registerExtension({
  name: "streamedit.previewLoader",
  async setup() {
    const name = new URLSearchParams(location.search).get("streamedit_workflow");
    if (!name) return;
    const response = await fetch(`/extensions/%s/workflows/${name}.json`);
    await app.loadGraphData(await response.json(), true, true, name);
    setTimeout(() => {
      // Drop the frontend's announcement banner, then frame the whole graph.
      for (const b of document.querySelectorAll("button")) {
        if (b.textContent.trim() === "Try it out") b.parentElement?.parentElement?.remove();
      }
      app.canvas.ds.scale = 0.6;
      app.canvas.ds.offset = [230, 150];
      app.canvas.setDirty(true, true);
    }, 1000);
  },
});
""" % LOADER


class PreviewServer(ComfyServer):
    def prepare(self) -> None:
        super().prepare()
        ext = self.base / "custom_nodes" / LOADER
        (ext / "web" / "workflows").mkdir(parents=True, exist_ok=True)
        (ext / "__init__.py").write_text('WEB_DIRECTORY = "./web"\nNODE_CLASS_MAPPINGS = {}\n')
        (ext / "web" / "loader.js").write_text(LOADER_JS)
        for wf in sorted((REPO / "workflows").glob("*.json")):
            shutil.copy(wf, ext / "web" / "workflows" / wf.name)

    def start(self, timeout: float = 120.0) -> None:
        self.extra_nodes = [LOADER]
        super().start(timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1700,720")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = PreviewServer(Path(tmp))
        server.prepare()
        settings = Path(tmp) / "user" / "default" / "comfy.settings.json"
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
        server.start()
        try:
            for wf in sorted((REPO / "workflows").glob("*.json")):
                out = wf.with_suffix(".png")
                subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                f"--user-data-dir={tmp}/chromium-{wf.stem}",
                                "--hide-scrollbars", f"--window-size={args.size}",
                                "--virtual-time-budget=20000", f"--screenshot={out}",
                                f"{server.url}/?streamedit_workflow={wf.stem}"],
                               check=True, capture_output=True, timeout=120)
                print(f"wrote {out}", file=sys.stderr)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
