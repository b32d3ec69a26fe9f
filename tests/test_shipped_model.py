"""The demo model shipped in models/: it loads as the 6-step distilled demo preset, and `eval` on
2 test pairs scores in the ranges it scored when it was shipped, so CI notices a broken model file,
loader, text encoder or sampler."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamedit_core.io.checkpoint import read_checkpoint_config, read_checkpoint_metadata

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "streamedit_demo.safetensors"
MAX_MB = 40.0  # the limit for a binary in the repo


def test_shipped_model_is_the_distilled_demo_preset():
    assert SHIPPED.is_file(), f"the shipped demo model {SHIPPED} is missing"
    assert SHIPPED.stat().st_size / 1e6 <= MAX_MB
    config = read_checkpoint_config(SHIPPED)
    assert config.name == "demo" and config.sampler.steps == 6 and config.sampler.cfg_scale == 1.0
    stages = json.loads(read_checkpoint_metadata(SHIPPED)["stages"])
    assert [s["stage"] for s in stages] == ["stle", "dit", "distill", "refine"]
    assert config.refiner.width == 32 and config.refiner.prompt and config.refiner.grade_knots == 33
    # Run 25's prompt anchors, stored on the refiner (checkpoint format 1), read as the model's
    # vocabulary: each family's mean view and the empty prompt's.
    assert len(config.vocabulary.edits) == 14 and config.vocabulary.edits[-1] == "none"


def test_eval_of_the_shipped_model_on_two_test_pairs(tmp_path):
    """As shipped (run 25, 2026-12-06) these two pairs scored 30.5 dB (blur on real footage) and
    33.8 dB (brighter on the nearly black Hubble photo), both recognised by the adherence
    classifier; random weights of run 11's preset scored 12.8 and 9.6 dB, SSIM under 0.1. The
    exact numbers are pinned in tests/golden/eval_two_pairs.json (test_golden.py writes it)."""
    from test_golden import EVAL_FIELDS, GOLDEN, eval_rows

    rows = eval_rows(tmp_path / "eval")  # on the CPU, where the golden numbers were measured
    golden = json.loads((GOLDEN / "eval_two_pairs.json").read_text())
    assert [r["pair"] for r in rows] == [g["pair"] for g in golden]
    for row, gold in zip(rows, golden):
        for key in EVAL_FIELDS:
            assert row[key] == pytest.approx(gold[key], abs=1e-3), (row["pair"], key)
    assert [r["pair"].rsplit("-", 1)[-1] for r in rows] == ["blur", "brighter"]
    assert rows[0]["psnr"] == pytest.approx(30.5, abs=1.0) and rows[1]["psnr"] == pytest.approx(33.8, abs=1.0)
    for r in rows:
        assert r["adherence"] == 1.0 and r["ssim"] > 0.5 and 0.5 < r["flicker_ratio"] < 2.5
        assert r["read_as"] == r["family"]  # the vocabulary's reading of the prompt
