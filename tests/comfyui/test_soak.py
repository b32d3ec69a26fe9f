"""The soak and fault script (`python -m streamedit_core bench soak`, issue 49) with fewer jobs:
its own ComfyUI server (a fault restarts it), the shipped model on 32 x 32 frames."""
from __future__ import annotations

import argparse

import pytest

from streamedit_core.bench import soak

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


def test_streams_survive_many_jobs_many_streams_and_faults(tmp_path):
    args = argparse.Namespace(model="shipped", jobs=120, rss_from=40, rss_bound_mb=64.0, clear_history_every=0,
                              streams=40, size=32,
                              chunk_frames=4, steps=6, threads=1, timeout=300, name="test-soak",
                              out=tmp_path, base=tmp_path / "comfyui")
    lines = []
    result = soak.run(args, log=lines.append)
    assert result["passed"], (result["failed"], "\n".join(lines))
    summary = result["results"]["summary"]
    assert summary["faults_survived"] == "6/6" and summary["frames_lost"] == 0
    assert summary["bad_inputs_clear"] == "10/10" and summary["streams_held_after"] <= 16
    assert result["results"]["soak"]["rss_growth_mb"] <= 64
