"""Fixtures for the tests that drive a real ComfyUI: one server per test session.

The server's base directory holds a tiny StreamEdit checkpoint made here, a short 32x32 clip in
input/, and custom_nodes/comfyui-streamedit linked to this repo.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from comfy_testdata import (CHECKPOINT, CLIP, CLIP_FPS, CLIP_FRAMES, CLIP_SIZE, LONG_CLIP, ODD_CLIP,
                            THREADS, clip_frames, make_test_model)
from streamedit_core.bench.comfyui import COMFYUI_ROOT, ComfyClient, ComfyServer


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    from streamedit_core.io.checkpoint import save_checkpoint
    from streamedit_core.io.video import VideoWriter

    if not (COMFYUI_ROOT / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {COMFYUI_ROOT}: run `make comfyui` (the Makefile's test target does)")
    base = tmp_path_factory.mktemp("comfyui")
    server = ComfyServer(base)
    server.prepare()
    save_checkpoint(make_test_model(), base / "models" / "streamedit" / CHECKPOINT)
    for name, frames, size in ((CLIP, CLIP_FRAMES, CLIP_SIZE), (LONG_CLIP, 144, CLIP_SIZE),
                               (ODD_CLIP, 8, 36)):
        with VideoWriter(base / "input" / name, CLIP_FPS, size, size) as writer:
            writer.write(clip_frames(frames, size))
    return base


@pytest.fixture(scope="session")
def comfy_server(comfy_base):
    server = ComfyServer(comfy_base, threads=THREADS)
    server.start()
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the server reports the end of the server's log with it."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("comfy_server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append(("ComfyUI server log (last 8000 chars)", server.log()[-8000:]))


@pytest.fixture
def comfy(comfy_server):
    """A client (HTTP + WebSocket, its own client id) of the session's server."""
    if not comfy_server.alive():
        pytest.fail(f"the ComfyUI server died:\n{comfy_server.log()[-5000:]}")
    client = ComfyClient(comfy_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    client = ComfyClient(comfy_server.url)
    try:
        return client.object_info()
    finally:
        client.close()
