"""The demo recipe (`python -m streamedit_core train-demo`, streamedit_core/train/recipe.py) on
the tiny preset: the stages chain, the export is the distilled model with its fitted refiner in
fp16 as a 6-step CFG-free sampler, a rerun skips finished stages, bad input is named."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from streamedit_core.config import VocabularyConfig
from streamedit_core.data.synthetic import FAMILIES
from streamedit_core.eval.benchmark import build_pairs
from streamedit_core.eval.metrics import flicker
from streamedit_core.io.checkpoint import load_checkpoint, read_checkpoint_metadata
from streamedit_core.train import recipe
from streamedit_core.train.config import TrainConfig

CONFIGS = recipe.REPO / "configs" / "demo"


def train_demo(argv: list[str]) -> int:
    """The recipe as `python -m streamedit_core train-demo ARGV` runs it, without its logging set-up."""
    return recipe.run(recipe.parse_args(argv))


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory) -> Path:
    """configs/demo with the tiny preset, 32 px, 8 frames, batch 2 and 3 steps at most."""
    folder = tmp_path_factory.mktemp("configs")
    for stage in recipe.SHARES:  # the stages with a config (refine has CLI options)
        d = json.loads((CONFIGS / f"{stage}.json").read_text())
        d["data"].update(size=32, frames=8)
        d.update(global_batch=2, steps=3, text="random" if stage != "stle" else d.get("text", "minilm"))
        if stage == "stle":
            d["preset"] = "tiny"
        if "edit_map_steps" in d:  # the tiny preset has no edit map (test_train covers the fit)
            d["edit_map_steps"] = 0
        (folder / f"{stage}.json").write_text(json.dumps(d))
    return folder


def test_stages_export_and_rerun(tiny_configs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # A budget far above what the configs' 3-step caps need: on a loaded machine 5 minutes planned
    # a single STLE step (15 s of share, trial steps of several seconds).
    argv = ["--out", str(out), "--config-dir", str(tiny_configs), "--budget-minutes", "60",
            "--latent-samples", "8", "--refiner-width", "4", "--refiner-grade-knots", "33",
            "--refiner-prompt-view", "text", "--refine-rounds", "1", "--refine-steps", "3", "--refine-lr", "1e-3", "--no-eval"]
    assert train_demo(argv) == 0
    refine = json.loads((out / "refine" / "stage.json").read_text())
    assert (refine["steps"], refine["pairs"], refine["lr"]) == (3, 78, 1e-3)  # one round of the train split
    for stage in recipe.SHARES:
        summary = json.loads((out / stage / "stage.json").read_text())
        assert summary["steps"] == 3  # the config's cap, under a budget that allows more
        assert len((out / stage / "metrics.jsonl").read_text().splitlines()) == 1
    # The DiT stages train on latents that stage 1's STLE encoded once.
    assert json.loads((out / "latents" / "done.json").read_text())["samples"] == 8
    for stage in ("dit", "distill"):
        data = json.loads((out / stage / "stage.json").read_text())["config"]["data"]
        assert data == {**data, "kind": "latents", "path": str(out / "latents")}
    # Each stage starts from the one before: the DiT stage keeps stage 1's STLE.
    stle = load_checkpoint(out / "stle" / "model.safetensors")
    dit = load_checkpoint(out / "dit" / "model.safetensors")
    for name, t in stle.stle.state_dict().items():
        assert torch.equal(t, dit.stle.state_dict()[name]), name

    export = out / recipe.EXPORT_NAME
    exported = load_checkpoint(export)
    distilled = load_checkpoint(out / "refine" / "model.safetensors")
    assert exported.config == distilled.config and exported.config.refiner.width == 4
    assert (exported.config.refiner.grade_knots, exported.config.refiner.prompt_view) == (33, "text")
    # The fitted refiner got its prompt anchors (the model's vocabulary): one per family and the empty prompt's.
    anchors = (*sorted(FAMILIES), "none")
    assert exported.config.vocabulary.edits == anchors and exported.vocabulary.anchors.shape[0] == len(anchors)
    # The refine stage added a fitted refiner (its output layer starts at zero) and changed nothing else.
    student = load_checkpoint(out / "distill" / "model.safetensors")
    assert student.refiner is None
    assert all(torch.equal(t, distilled.state_dict()[k]) for k, t in student.state_dict().items())
    assert json.loads((out / "refine" / "stage.json").read_text())["anchors"] == list(anchors)
    assert distilled.refiner.out.weight.abs().max() > 0 and distilled.refiner.grade.weight.abs().max() > 0
    assert (exported.config.sampler.steps, exported.config.sampler.cfg_scale) == (6, 1.0)
    for name, t in distilled.state_dict().items():
        e = exported.state_dict()[name]
        assert e.dtype == (torch.float16 if t.is_floating_point() else t.dtype), name
        assert torch.equal(e, t.to(e.dtype)), name
    meta = json.loads(read_checkpoint_metadata(export)["stages"])
    assert [s["stage"] for s in meta] == list(recipe.STAGES)

    # Eval on 2 test pairs: the metrics, and the ceiling (the ground truth through the STLE).
    result = recipe.evaluate_checkpoint(export, out / "eval", limit=2, steps=2)
    assert result["pairs"] == 2 and set(result["targets_met"]) == set(recipe.TARGETS)
    assert 0 <= result["adherence"] <= 1 and 0 <= result["ceiling_adherence"] <= 1
    assert result["ceiling_psnr"] > 0 and result["flicker_ratio"] > 0
    assert "Ceiling (the ground truth encoded and decoded by this STLE)" in (out / "eval" / "eval.md").read_text()
    # eval.json holds the result: the headline numbers, the ceiling's and the targets, and the rows.
    saved = json.loads((out / "eval" / "eval.json").read_text())
    for key in ("psnr", "ssim", "adherence", "adherence_classified", "temporal_coherence", "overall", "flicker",
                "flicker_ground_truth", "flicker_ratio", "stle_psnr", "ceiling_psnr", "ceiling_adherence"):
        assert saved[key] == result[key], key
    assert saved["targets_met"] == result["targets_met"] and set(saved["rows"]) == {"ours", "stle-round-trip"}
    assert result["ceiling_psnr"] == result["summary"]["stle-round-trip"]["psnr"]
    assert result["psnr"] == result["summary"]["ours"]["psnr"]
    gt = [p.target for p in build_pairs("test", limit=2)]
    assert result["flicker_ground_truth"] == pytest.approx(sum(flicker(c) for c in gt) / 2)

    # A rerun finds every stage done: nothing is trained again.
    before = {s: (out / s / "stage.json").read_text() for s in recipe.STAGES}
    assert train_demo(argv) == 0
    assert before == {s: (out / s / "stage.json").read_text() for s in recipe.STAGES}
    # An export from a command that ran the last stage alone still lists every stage behind it.
    export.unlink()
    assert train_demo(argv + ["--stages", "refine"]) == 0
    assert [s["stage"] for s in json.loads(read_checkpoint_metadata(export)["stages"])] == list(recipe.STAGES)

    # --student-from refits the refiner alone on an exported model's student.
    again = tmp_path / "again"
    assert train_demo(["--out", str(again), "--student-from", str(export)] + argv[2:]
                      + ["--stages", "refine", "--refine-lr", "2e-3", "--refine-underexposed",
                         "--no-refiner-anchors"]) == 0
    reused = load_checkpoint(again / "distill" / "model.safetensors", dtype=torch.float32)
    assert reused.refiner is None
    assert all(torch.equal(t, exported.state_dict()[k].float()) for k, t in reused.state_dict().items())
    stages = json.loads(read_checkpoint_metadata(again / recipe.EXPORT_NAME)["stages"])
    assert [s["stage"] for s in stages] == list(recipe.STAGES)
    refit = json.loads((again / "refine" / "stage.json").read_text())
    assert refit["lr"] == 2e-3 and refit["anchors"] == []
    # --add-anchors gives an exported refiner its anchors after the fact, keeping the rest.
    plain = again / recipe.EXPORT_NAME
    assert train_demo(["--out", str(again), "--add-anchors", str(plain), "--export",
                       str(tmp_path / "anchored.safetensors"), "--no-eval"]) == 0
    anchored, before = load_checkpoint(tmp_path / "anchored.safetensors"), load_checkpoint(plain)
    assert anchored.config.vocabulary.edits == anchors
    assert anchored.config.replace(vocabulary=VocabularyConfig()) == before.config
    assert anchored.vocabulary.anchors.dtype == torch.float16
    assert all(torch.equal(t, anchored.state_dict()[k]) for k, t in before.state_dict().items())
    meta = read_checkpoint_metadata(tmp_path / "anchored.safetensors")
    assert meta["stages"] == read_checkpoint_metadata(plain)["stages"] and "anchors_added" in meta
    with pytest.raises(ValueError, match="--add-anchors: .* has no refiner that reads the prompt"):
        train_demo(["--out", str(again), "--add-anchors", str(again / "distill" / "model.safetensors")])
    # --refine-underexposed: an underexposed copy of each pair of the families the DiT dims
    dimmed = TrainConfig.from_file(tiny_configs / "dit.json").data.underexposed_families
    assert dimmed and refit["underexposed_families"] == sorted(dimmed)
    assert refit["pairs"] == 78 + 6 * len(dimmed)  # 6 train photos, one pair each per family
    assert refine["underexposed_families"] == []
    with pytest.raises(ValueError, match="--student-from .*: not exported by train-demo"):
        train_demo(["--out", str(tmp_path / "bad"), "--student-from", str(out / "distill" / "model.safetensors")])

    # An interrupted stage (no stage.json yet) resumes from its state with its planned steps.
    stle_dir = out / "stle"
    (stle_dir / "stage.json").unlink()
    plan = json.loads((stle_dir / "plan.json").read_text())
    (stle_dir / "plan.json").write_text(json.dumps({**plan, "steps": 5}))
    assert train_demo(argv[:-1] + ["--stages", "stle", "--no-eval"]) == 0
    summary = json.loads((stle_dir / "stage.json").read_text())
    assert (summary["steps"], summary["resumed"]) == (5, True)
    steps_logged = [json.loads(line)["step"] for line in (stle_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [3, 5]


def test_no_refiner_exports_the_student(tiny_configs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--out", str(out), "--config-dir", str(tiny_configs), "--budget-minutes", "5",
            "--latent-samples", "8", "--refiner-width", "0", "--no-eval"]
    assert train_demo(argv) == 0
    assert not (out / "refine").exists()
    exported = load_checkpoint(out / recipe.EXPORT_NAME)
    assert exported.refiner is None
    stages = json.loads(read_checkpoint_metadata(out / recipe.EXPORT_NAME)["stages"])
    assert [s["stage"] for s in stages] == ["stle", "dit", "distill"]


def test_retimer_fits_the_step_count_to_the_measured_pace(tmp_path: Path, monkeypatch) -> None:
    from streamedit_core.train.config import DataConfig
    from streamedit_core.train.trainer import Trainer

    monkeypatch.setattr(recipe, "RETIME_FROM", 1)
    monkeypatch.setattr(recipe, "RETIME_AT", 3)
    monkeypatch.setattr(recipe, "RETIME_MARGIN", 1.0)

    def run(deadline: float, cap: int, name: str, steps: int = 6) -> tuple[Trainer, Path]:
        now = [0.0]  # a fake clock: 2 s a step, twice the calibrated pace
        plan = tmp_path / f"{name}.json"
        plan.write_text(json.dumps({"steps": steps, "calibrated_seconds_per_step": 1.0}))
        retimer = recipe.Retimer("dit", deadline, cap, plan, clock=lambda: now[0])
        trainer = Trainer(TrainConfig(task="dit", text="random", preset="tiny", steps=steps, global_batch=2,
                                      data=DataConfig(kind="synthetic", frames=8, size=32),
                                      out_dir=str(tmp_path / name), progress=False, log_every=1))

        def after_step(t: Trainer) -> None:
            now[0] += 2.0
            retimer(t)

        trainer.run(after_step=after_step)
        return trainer, plan

    # At step 3 (6 s) 14 s are left: 7 more steps than the 3 done, 10 in all instead of 6.
    trainer, plan = run(deadline=20.0, cap=100, name="longer")
    assert trainer.cfg.steps == trainer.step == 10
    assert json.loads(plan.read_text()) == {"steps": 10, "calibrated_seconds_per_step": 1.0,
                                            "retimed_seconds_per_step": 2.0, "planned_steps": 6}
    logged = [json.loads(line)["step"] for line in (tmp_path / "longer" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 11))
    # The config's step cap still holds, and a slower pace than planned shortens the run.
    assert run(deadline=100.0, cap=7, name="capped")[0].step == 7
    assert run(deadline=8.0, cap=100, name="shorter")[0].step == 4
    # A run shorter than twice RETIME_AT keeps its plan, and so does a distillation whose first
    # round ends before RETIME_AT (three rounds of 8 steps: the second starts at step 3).
    assert run(deadline=100.0, cap=100, name="short", steps=5)[0].step == 5
    plan = tmp_path / "distill.json"
    plan.write_text(json.dumps({"steps": 8, "calibrated_seconds_per_step": 1.0}))
    distill = SimpleNamespace(step=1, cfg=TrainConfig(task="distill", teacher_steps=48, steps=8))
    retimer = recipe.Retimer("distill", 100.0, 100, plan, clock=lambda: 2.0 * distill.step)
    retimer(distill)
    distill.step = 3
    retimer(distill)
    assert distill.cfg.steps == 8 and json.loads(plan.read_text())["steps"] == 8


def test_a_stage_overrun_does_not_starve_the_next(tmp_path: Path, monkeypatch) -> None:
    """Each stage gets its share of the time left, but at least its share of the whole budget:
    a DiT that overran leaves the distillation its 10 %, and the run ends later."""
    clock = [0.0]
    budgets = {}

    def fake_stage(stage, cfg, budget_s):
        budgets[stage] = budget_s
        clock[0] += {"stle": 5.0, "dit": budget_s + 600.0, "distill": budget_s}[stage]  # the DiT overruns 10 min
        folder = Path(cfg.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"")
        (folder / "stage.json").write_text(json.dumps({"stage": stage}))
        return folder / "model.safetensors"

    monkeypatch.setattr(recipe.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(recipe, "run_stage", fake_stage)
    monkeypatch.setattr(recipe, "encode_latents", lambda cfg, *a: cfg.data)
    monkeypatch.setattr(recipe, "export", lambda model, dest, summaries: dest)
    assert train_demo(["--out", str(tmp_path), "--budget-minutes", "100", "--refiner-width", "0",
                       "--no-eval"]) == 0
    shares = recipe.SHARES
    assert budgets["stle"] == pytest.approx(6000 * shares["stle"])
    assert budgets["dit"] == pytest.approx((6000 - 5) * shares["dit"] / (shares["dit"] + shares["distill"]))
    assert budgets["distill"] == pytest.approx(6000 * shares["distill"])  # not the 31 s left


def test_stle_from_reuses_an_earlier_runs_stle(tiny_configs: Path, tmp_path: Path) -> None:
    from streamedit_core.model import StreamEditModel

    common = ["--config-dir", str(tiny_configs), "--budget-minutes", "5", "--latent-samples", "4", "--no-eval"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_demo(["--out", str(first), "--stages", "stle", *common]) == 0
    assert train_demo(["--out", str(second), "--stle-from", str(first), "--stages", "dit", *common]) == 0
    # Stage 1 is not trained again: the earlier STLE next to a fresh DiT of the preset.
    assert not (second / "stle" / "metrics.jsonl").exists()
    reused = load_checkpoint(second / "stle" / "model.safetensors")
    trained = load_checkpoint(first / "stle" / "model.safetensors")
    fresh = StreamEditModel.from_preset("tiny", seed=0)
    for name, t in trained.stle.state_dict().items():
        assert torch.equal(t, reused.stle.state_dict()[name]), name
    for name, t in fresh.dit.state_dict().items():
        assert torch.equal(t, reused.dit.state_dict()[name]), name
    summary = json.loads((second / "stle" / "stage.json").read_text())
    assert summary["reused_from"] == str(first / "stle" / "model.safetensors")
    assert json.loads((second / "dit" / "stage.json").read_text())["steps"] == 3
    with pytest.raises(ValueError, match="--stle-from .*nowhere: no finished STLE stage there"):
        train_demo(["--out", str(tmp_path / "third"), "--stle-from", str(tmp_path / "nowhere")])


def test_stle_stage_of_zero_steps_is_the_pca_start(tiny_configs: Path, tmp_path: Path) -> None:
    """steps 0 in stle.json: stage 1 is the PCA of pca_samples items, untimed and untrained."""
    from streamedit_core.model import StreamEditModel
    from streamedit_core.train.trainer import build_dataset, init_linear_path, set_latent_statistics

    configs = tmp_path / "configs"
    configs.mkdir()
    stle_cfg = json.loads((tiny_configs / "stle.json").read_text())
    (configs / "stle.json").write_text(json.dumps({**stle_cfg, "steps": 0, "pca_samples": 4}))
    out = tmp_path / "run"
    argv = ["--out", str(out), "--config-dir", str(configs), "--stages", "stle", "--no-eval"]
    assert train_demo(argv) == 0
    summary = json.loads((out / "stle" / "stage.json").read_text())
    assert (summary["steps"], summary["seconds_per_step"], summary["config"]["pca_samples"]) == (0, None, 4)
    assert not (out / "stle" / "metrics.jsonl").exists()

    cfg = recipe.stage_config("stle", configs, out, None)
    expected = StreamEditModel.from_preset("tiny", seed=cfg.seed)
    dataset = build_dataset(cfg)
    with torch.no_grad():
        init_linear_path(expected.stle, dataset, samples=4)
        set_latent_statistics(expected.stle, dataset, cfg)
    got = load_checkpoint(out / "stle" / "model.safetensors").stle.state_dict()
    for name, t in expected.stle.state_dict().items():
        assert torch.allclose(t, got[name], atol=1e-6), name


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stages \\['finetune'\\]"):
        train_demo(["--out", str(tmp_path), "--stages", "stle,finetune"])
    with pytest.raises(ValueError, match="stage dit needs .*stle.*model.safetensors"):
        train_demo(["--out", str(tmp_path), "--stages", "dit"])
    with pytest.raises(ValueError, match="--budget-minutes > 0.*-1"):
        train_demo(["--out", str(tmp_path), "--budget-minutes", "-1"])
    with pytest.raises(ValueError, match="--refiner-grade-knots 0 .* got 33 with --refiner-no-prompt"):
        train_demo(["--out", str(tmp_path), "--refiner-no-prompt", "--refiner-grade-knots", "33"])
    with pytest.raises(ValueError, match="--refine-wording-swap in \\[0, 1\\], got 5, 3000, 2.0, 0.0, 0.0"):
        train_demo(["--out", str(tmp_path), "--refine-lr", "0"])
    with pytest.raises(ValueError, match="got 5, 3000, 2.0, 0.0005, 1.5"):
        train_demo(["--out", str(tmp_path), "--refine-wording-swap", "1.5"])
    with pytest.raises(ValueError, match="--refiner-grade-knots 0 .* got 1"):
        train_demo(["--out", str(tmp_path), "--refiner-grade-knots", "1"])


def test_the_command(tmp_path: Path, capsys) -> None:
    """`python -m streamedit_core train-demo`: its options, and bad input as one `error:` line."""
    from streamedit_core.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train-demo", "--help"])
    assert stop.value.code == 0 and "--budget-minutes" in capsys.readouterr().out
    assert main(["train-demo", "--out", str(tmp_path / "run"), "--budget-minutes", "0"]) == 2
    assert "error: need --threads >= 0 and --budget-minutes > 0, got 0, 0.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
