"""The live page served by ComfyUI itself: workflows/live_camera.json (Model Loader -> Text
Ensemble Loader -> StreamEdit Live Session) queued in a real ComfyUI, the page at
/streamedit/live/ in a real headless Chromium with the coded fake camera (tests/conftest.py's
live_camera), the same measurements as tests/live/test_live_browser.py."""
from __future__ import annotations

import copy
import json
import statistics
import time
import urllib.request

import pytest

from live_helpers import LIVE_SIZE
from streamedit_core.bench.browser import FrameCode, LivePage, chromium, match_latency
from streamedit_core.bench.comfyui import REPO, ui_to_api

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

GRAY, SEPIA = "make it black and white", "make it a sepia photograph"
CODE = FrameCode(block=8 / LIVE_SIZE)


def live_workflow(object_info: dict, prompt: str) -> dict:
    api = ui_to_api(json.loads((REPO / "workflows" / "live_camera.json").read_text()), object_info)
    (node,) = [n for n in api.values() if n["class_type"] == "StreamEditLiveSession"]
    node["inputs"].update(prompt=prompt, size=LIVE_SIZE)
    return api


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def queue(comfy, object_info, prompt: str) -> str:
    api = live_workflow(object_info, prompt)
    result = comfy.run(copy.deepcopy(api), 120)
    assert result.status == "execution_success", result.error or result.events
    (out,) = [o for i, o in comfy.history(result.prompt_id)["outputs"].items()
              if api[i]["class_type"] == "StreamEditLiveSession"]
    return out["text"][0]


def edit_numbers(page: LivePage, seconds: float) -> dict:
    page.clear_frames()
    time.sleep(seconds)
    matched = match_latency(page.frames("source"), page.frames("edited"), max_ms=5000)
    assert len(matched) >= 8, f"only {len(matched)} edited frames in {seconds} s"
    src, out = [m[2] for m in matched], [m[3] for m in matched]
    return {"saturation": statistics.mean(f["sat"] for f in out) / statistics.mean(f["sat"] for f in src),
            "warmer": statistics.mean(f["r"] - f["b"] for f in out) - statistics.mean(f["r"] - f["b"] for f in src),
            "frames": len(matched)}


def test_live_session_node_serves_the_page_follows_requeues_and_stops_on_free(comfy, comfy_server, object_info,
                                                                             live_camera):
    base = comfy_server.url + "/streamedit/live"
    before = get_json(base + "/api/info")
    # not set up yet (or freed by an earlier test's /free on this shared server): says what to do
    assert not before["configured"] and "Live Session node" in before["reason"], before
    with urllib.request.urlopen(base, timeout=10) as r:  # redirected to the page
        assert r.url.endswith("/streamedit/live/") and "StreamEdit Live" in r.read().decode()

    text = queue(comfy, object_info, GRAY)
    assert text.startswith(f"open /streamedit/live/ on this server ({LIVE_SIZE} x {LIVE_SIZE}, 6 steps)")
    assert "is read as grayscale" in text

    with chromium(live_camera) as browser:
        page = LivePage(browser, base + "/", CODE)
        try:
            page.start()
            page.wait_edited(4, timeout=90)
            gray = edit_numbers(page, 6)
            assert gray["saturation"] < 0.2, gray

            # queued again with another prompt: the running session switches to it
            assert "is read as sepia" in queue(comfy, object_info, SEPIA)
            page.page.wait_for_function("window.live.lastStats && window.live.lastStats.read_as === 'sepia'",
                                        timeout=30000)
            time.sleep(3)
            sepia = edit_numbers(page, 6)
            assert sepia["warmer"] > 0.06, sepia

            # "Free memory": the session ends, the page says why, new offers are refused with it
            comfy.free()
            page.page.wait_for_function("window.live.state.startsWith('ended')", timeout=30000)
            assert "Free memory" in page.state()["state"]
            info = get_json(base + "/api/info")
            assert info["sessions"] == 0 and not info["configured"] and "Free memory" in info["reason"]
        finally:
            page.close()
    assert comfy_server.alive()
