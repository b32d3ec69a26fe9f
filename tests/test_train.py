"""Training: losses, ASW partitions, loss goes down (STLE and DiT, one through the real MiniLM),
resume == uninterrupted, config and CLI errors."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streamedit_core.train.config import DataConfig, TrainConfig
from streamedit_core.train.losses import (flow_loss, global_shift, pixel_channel_weights,
                                          temporal_consistency_loss)
from streamedit_core.train.partitions import chunk_size, levels, window_levels
from streamedit_core.data.synthetic import SyntheticEditDataset
from streamedit_core.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
FIXED = DataConfig(frames=8, size=32, length=2, identity_fraction=0.0)  # a fixed pair of samples


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _cfg(tmp_path, **kw):
    base = dict(task="dit", text="random", data=FIXED, steps=50, global_batch=2, lr=2e-3,
                out_dir=str(tmp_path / "run"), progress=False, log_every=10)
    base.update(kw)
    return TrainConfig(**base)


# --- losses and partitions --------------------------------------------------------------------
def test_temporal_loss_is_zero_for_the_truth_and_sees_flicker():
    x0 = torch.randn(2, 12, 3, 4, 4)
    w = torch.tensor([[0.0, 1.0, 1.0]] * 2)
    assert float(temporal_consistency_loss(x0, x0, w)) == 0.0
    assert float(temporal_consistency_loss(x0 + 0.3, x0, w)) == pytest.approx(0.0, abs=1e-10)  # no change
    flicker = x0.clone()
    flicker[:, :, 1] += 0.5
    assert float(temporal_consistency_loss(flicker, x0, w)) > 0.1


def test_global_shift_recovers_a_roll():
    a = torch.randn(3, 12, 8, 8)
    b = torch.roll(a, shifts=(2, -1), dims=(-2, -1))
    assert global_shift(a, b).tolist() == [[2, -1]] * 3


def test_motion_compensated_loss_ignores_error_that_moves_with_the_source():
    cond = torch.randn(1, 12, 2, 8, 8)
    cond[:, :, 1] = torch.roll(cond[:, :, 0], (1, 2), dims=(-2, -1))
    x0 = torch.zeros(1, 12, 2, 8, 8)
    err = torch.randn(1, 12, 8, 8)
    pred = torch.stack([err, torch.roll(err, (1, 2), dims=(-2, -1))], dim=2)
    w = torch.tensor([[1.0, 1.0]])
    assert float(temporal_consistency_loss(pred, x0, w, cond)) == pytest.approx(0.0, abs=1e-10)
    assert float(temporal_consistency_loss(pred, x0, w)) > 0.5


def test_partition_levels():
    u = torch.rand(5, 6)
    uni = levels("uniform", 6, u, 3.0)
    assert torch.all(uni == uni[:, :1])
    c2 = levels("chunk2", 6, u, 3.0)
    assert torch.all(c2[:, 0] == c2[:, 1]) and torch.all(c2[:, 1] < c2[:, 2])  # staggered, oldest least noisy
    c1 = levels("chunk1", 6, u, 3.0)
    assert torch.all(c1[:, 1:] > c1[:, :-1]) and chunk_size("chunk4", 3) == 3
    ind = levels("independent", 6, u, 3.0)
    assert torch.all((ind > 0) & (ind <= 1)) and torch.all((c1 > 0) & (c1 <= 1))
    t = window_levels("chunk1", 2, 6, u, 3.0)
    assert t.shape == (5, 6) and torch.all(t[:, :2] == 0) and torch.all(t[:, 2:] > 0)
    with pytest.raises(ValueError, match="'chunk0'"):
        levels("chunk0", 6, u, 3.0)
    with pytest.raises(ValueError, match="history=6"):
        window_levels("uniform", 6, 6, u, 3.0)


# --- training reduces the loss ----------------------------------------------------------------
def _fixed_loss(trainer):
    from streamedit_core.train.data import collate
    batch = collate([trainer.dataset[p] for p in (0, 1)])
    fn = trainer.stle_loss if trainer.cfg.task == "stle" else trainer.dit_loss
    with torch.no_grad():
        return float(fn(batch, [0, 1], step=0)[0])  # fixed batch, fixed noise and levels


def test_dit_training_reduces_the_loss_with_the_real_text_encoder(tmp_path, minilm16):
    tr = Trainer(_cfg(tmp_path, text="minilm", temporal_weight=0.5), text_encoder=minilm16)
    before = _fixed_loss(tr)
    tr.run()
    after = _fixed_loss(tr)
    assert after < 0.8 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]
    assert {"loss", "lr", "flow", "temporal", "samples_per_s", "memory_mb", "skipped_rows"} <= set(rows[-1])


def test_dit_training_with_dsa_attention_reduces_the_loss(tmp_path):
    """Issue 49, defect 1: the 2b/10b presets train with attention="dsa", and backward through the
    DSA op failed at the first step. The tiny preset with DSA (blocks of 16 tokens, half of them
    kept) from a checkpoint, as a later training stage starts."""
    from streamedit_core.config import get_preset
    from streamedit_core.io.checkpoint import save_checkpoint
    from streamedit_core.model import StreamEditModel

    tiny = get_preset("tiny")
    config = tiny.replace(dit=dataclasses.replace(tiny.dit, attention="dsa", dsa_block_size=4, dsa_density=0.5))
    save_checkpoint(StreamEditModel(config), tmp_path / "dsa.safetensors")
    tr = Trainer(_cfg(tmp_path, init_checkpoint=str(tmp_path / "dsa.safetensors"), steps=20))
    assert tr.model.config.dit.attention == "dsa"
    before = _fixed_loss(tr)
    tr.run()
    assert _fixed_loss(tr) < 0.9 * before


def test_stle_training_reduces_the_loss_and_starts_at_pca(tmp_path):
    from streamedit_core.io.checkpoint import load_checkpoint, save_checkpoint
    from streamedit_core.model import StreamEditModel

    data = DataConfig(frames=8, size=16, length=1, identity_fraction=0.0)
    # From random weights (an init checkpoint: no PCA start), 50 steps cut the loss.
    init = tmp_path / "random.safetensors"
    save_checkpoint(StreamEditModel.from_preset("tiny", seed=0), init)
    tr = Trainer(_cfg(tmp_path, task="stle", global_batch=1, data=data, lr=3e-3,
                      init_checkpoint=str(init)))
    before = _fixed_loss(tr)
    path = tr.run()
    after = _fixed_loss(tr)
    assert after < 0.85 * before, (before, after)
    stle = load_checkpoint(path).stle
    assert not torch.allclose(stle.latent_std, torch.ones_like(stle.latent_std))  # statistics set
    # From scratch the STLE starts at PCA of the data: below where those 50 steps ended.
    fresh = Trainer(_cfg(tmp_path, task="stle", global_batch=1, data=data, out_dir=str(tmp_path / "pca")))
    assert _fixed_loss(fresh) < after


# --- resume -----------------------------------------------------------------------------------
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    kw = dict(steps=6, global_batch=2, micro_batch=1, ema_decay=0.9, save_every=0,
              partitions=("uniform", "chunk1"), history_max=1, prompt_dropout=0.5)
    Trainer(_cfg(tmp_path, **kw, out_dir=str(tmp_path / "full"))).run()
    Trainer(_cfg(tmp_path, **{**kw, "steps": 3}, out_dir=str(tmp_path / "part"))).run()
    resumed = Trainer(_cfg(tmp_path, **kw, out_dir=str(tmp_path / "part")))
    resumed.run(resume=True)
    assert resumed.step == 6
    for name in ("model.safetensors", "train_state.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "part" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")


def test_resume_from_another_config_is_a_clear_error(tmp_path):
    Trainer(_cfg(tmp_path, steps=1)).run()
    with pytest.raises(ValueError, match=r"another config: lr: checkpoint 0.002 vs now 0.001"):
        Trainer(_cfg(tmp_path, steps=2, lr=1e-3)).run(resume=True)
    with pytest.raises(FileNotFoundError, match="no training state"):
        Trainer(_cfg(tmp_path, steps=2, out_dir=str(tmp_path / "empty"))).run(resume=True)


def test_resume_reads_a_field_newer_than_the_run_as_its_default():
    from streamedit_core.train.config import resume_mismatch

    saved = TrainConfig(task="stle").to_dict()
    del saved["pca_samples"], saved["data"]["identity_fraction"]  # as written before they existed
    assert resume_mismatch(saved, TrainConfig(task="stle")) == []
    assert resume_mismatch(saved, TrainConfig(task="stle", pca_samples=256)) == [
        "pca_samples: checkpoint 32 vs now 256"]


# --- configs and the CLI ----------------------------------------------------------------------
def test_config_errors_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="'chunkX'"):
        TrainConfig(partitions=("chunkX",))
    with pytest.raises(ValueError, match="teacher_steps=20"):
        TrainConfig(task="distill", teacher_steps=20)
    with pytest.raises(ValueError, match="need pca_samples >= 1, got 0"):
        TrainConfig(task="stle", pca_samples=0)
    with pytest.raises(ValueError, match=r"unknown keys \['frame'\]"):
        TrainConfig.from_dict({"data": {"frame": 8}})
    with pytest.raises(ValueError, match="global_batch=6 is not a multiple of micro_batch=4"):
        TrainConfig(global_batch=6, micro_batch=4).micro_for(1)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        TrainConfig.from_file(bad)


def test_builtin_text_that_does_not_fit_the_model_names_its_members(tmp_path):
    from streamedit_core.config import PRESETS
    from streamedit_core.train.trainer import build_text

    with pytest.raises(ValueError, match=r"text='minilm': model '2b' expects text members \[t5/4096/256"):
        build_text(_cfg(tmp_path, text="minilm"), PRESETS["2b"])


def test_stage_configs_load_with_the_paper_rates():
    cfgs = {p.stem: TrainConfig.from_file(p) for p in (REPO / "configs" / "train").glob("*.json")}
    assert cfgs["base"].lr == 5e-5 and cfgs["stream"].lr == 1e-5 and cfgs["finetune"].lr == 1e-5
    assert cfgs["distill"].distill_rounds()[-1][1] == 6


def test_cli_train_runs_and_reports_bad_input(tmp_path):
    cmd = [sys.executable, "-m", "streamedit_core", "train", "--config", str(REPO / "configs/train/tiny.json"),
           "--set", "steps=2", "--set", "text=random", "--set", "data.length=2", "--set", "global_batch=2",
           "--out-dir", str(tmp_path / "cli"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    r = subprocess.run(cmd + ["--set", "data.frames=6"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error: data.frames=6 must be a positive multiple of 4" in r.stderr
    r = subprocess.run([sys.executable, "-m", "streamedit_core", "distill", "--set", "steps=1"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "distill needs a teacher" in r.stderr


def test_bf16_checkpointing_motion_compensation_and_warmup_run(tmp_path):
    tr = Trainer(_cfg(tmp_path, steps=2, precision="bf16", grad_checkpointing=True,
                      motion_compensation=True, warmup_steps=4, partitions=("independent",)))
    assert tr.model.dit.cfg.grad_checkpointing and not tr.model.config.dit.grad_checkpointing
    losses = [tr.train_step()["loss"] for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert tr.lr_at(0) == pytest.approx(0.25 * tr.cfg.lr) and tr.lr_at(10) == tr.cfg.lr


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_takes_bf16_only_where_the_device_computes_it(tmp_path, monkeypatch, native):
    # Emulated bf16 is slower than fp32 (a demo DiT step: 10.2 s against 0.65 on a CPU
    # without AVX-512), so `auto` must not pick it there.
    from streamedit_core.train import dist
    assert isinstance(dist.native_bf16(torch.device("cpu")), bool)
    monkeypatch.setattr(dist, "native_bf16", lambda device: native)
    tr = Trainer(_cfg(tmp_path, steps=1, precision="auto"))
    assert tr.bf16 is native
    with tr._autocast():
        assert torch.is_autocast_enabled("cpu") is native
    assert torch.isfinite(torch.tensor(tr.train_step()["loss"]))
    assert Trainer(_cfg(tmp_path / "fp32", steps=1, precision="fp32")).bf16 is False
    with pytest.raises(ValueError, match="unknown precision 'fp16'; expected one of"):
        _cfg(tmp_path, precision="fp16")


def test_text_cache_file_replaces_the_encoder(tmp_path, minilm16):
    from streamedit_core.train.textbank import CachedText, save_text_cache
    prompts = ["make it sepia", "blur it"]
    path = save_text_cache(minilm16, prompts, tmp_path / "text.safetensors")
    cached = CachedText(path)
    want = minilm16.encode(prompts + [""])
    got = cached.encode(prompts + [""])
    for a, b in zip(want.states + want.masks, got.states + got.masks):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="'invert it' is not in the text cache"):
        cached.encode(["invert it"])
    data = DataConfig(frames=8, size=32, length=2)
    ds = SyntheticEditDataset(frames=8, size=32, length=2)
    save_text_cache(minilm16, ds.all_prompts(), tmp_path / "all.safetensors")
    tr = Trainer(_cfg(tmp_path, steps=1, data=data, text="minilm", text_cache=str(tmp_path / "all.safetensors")))
    assert isinstance(tr.text.encoder, CachedText) and tr.train_step()["loss"] > 0


def test_x0_loss_weighting_weights_each_frame_by_t_squared(tmp_path, monkeypatch):
    from streamedit_core.train import trainer as trainer_module
    from streamedit_core.train.data import collate

    seen = []
    real = trainer_module.flow_loss
    monkeypatch.setattr(trainer_module, "flow_loss",
                        lambda v, target, w, cw: seen.append(w) or real(v, target, w, cw))
    temporal_seen = []
    real_tc = trainer_module.temporal_consistency_loss
    monkeypatch.setattr(trainer_module, "temporal_consistency_loss",
                        lambda a, b, w, c, cw: temporal_seen.append(w) or real_tc(a, b, w, c, cw))
    runs = [Trainer(_cfg(tmp_path, loss_weighting=lw, out_dir=str(tmp_path / lw))) for lw in ("flow", "x0")]
    batch = collate([runs[0].dataset[p] for p in (0, 1)])
    with torch.no_grad():
        for tr in runs:
            tr.dit_loss(batch, [0, 1], step=0)
    t = runs[0]._window(batch, [0, 1], 0)[3]  # [B, T] noise levels of that step (seeded)
    assert torch.equal(seen[0], (t > 0).float())
    torch.testing.assert_close(seen[1], (t > 0).float() * t ** 2)
    for w in temporal_seen:  # the temporal term compares clean latents: never t-weighted
        assert torch.equal(w, (t > 0).float())
    assert len(temporal_seen) == 2
    with pytest.raises(ValueError, match="unknown loss_weighting 'x1'"):
        _cfg(tmp_path, loss_weighting="x1")


def test_pixel_weighting_weighs_each_latent_channel_by_its_pixel_scale(tmp_path):
    std = torch.tensor([4.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(pixel_channel_weights(std, 1.0), torch.tensor([16.0, 4.0, 1.0, 1.0]) / 5.5)
    torch.testing.assert_close(pixel_channel_weights(std, 0.5), torch.tensor([4.0, 2.0, 1.0, 1.0]) / 2.0)
    assert torch.equal(pixel_channel_weights(std, 0.0), torch.ones(4))
    # An error in one channel costs that channel's weight, in both DiT loss terms.
    target, w = torch.zeros(1, 4, 2, 2, 2), torch.ones(1, 2)
    cw = pixel_channel_weights(std, 1.0)
    for c in range(4):
        pred = target.clone()
        pred[:, c] = 1.0
        assert float(flow_loss(pred, target, w, cw)) == pytest.approx(float(cw[c]) / 4)
        pred[:, c, 1] = 3.0  # a jump of 2 between the frames
        assert float(temporal_consistency_loss(pred, target, w, None, cw)) == pytest.approx(float(cw[c]))

    from streamedit_core.train.data import collate

    plain = Trainer(_cfg(tmp_path))
    weighted = Trainer(_cfg(tmp_path, pixel_weighting=1.0, out_dir=str(tmp_path / "pw")))
    assert plain.channel_weight is None
    torch.testing.assert_close(weighted.channel_weight, pixel_channel_weights(weighted.model.stle.latent_std, 1.0))
    weighted.model.stle.latent_std[0] = 10.0  # so that the weights differ from ones
    weighted.channel_weight = pixel_channel_weights(weighted.model.stle.latent_std, 1.0)
    batch = collate([plain.dataset[p] for p in (0, 1)])
    with torch.no_grad():
        assert float(plain.dit_loss(batch, [0, 1], 0)[0]) != pytest.approx(float(weighted.dit_loss(batch, [0, 1], 0)[0]))
    with pytest.raises(ValueError, match="pixel_weighting=1.5 must be in \\[0, 1\\]"):
        _cfg(tmp_path, pixel_weighting=1.5)


def test_cosine_lr_decay_after_warmup(tmp_path):
    tr = Trainer(_cfg(tmp_path, steps=110, warmup_steps=10, lr=1e-3, lr_decay="cosine"))
    assert tr.lr_at(0) == pytest.approx(1e-4) and tr.lr_at(9) == pytest.approx(1e-3)
    assert tr.lr_at(60) == pytest.approx(5e-4)  # half way through the decay
    assert tr.lr_at(109) < 1e-6 and tr.lr_at(200) == 0.0
    flat = Trainer(_cfg(tmp_path, steps=110, warmup_steps=10, lr=1e-3, out_dir=str(tmp_path / "flat")))
    assert flat.lr_at(109) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown lr_decay 'linear'"):
        _cfg(tmp_path, lr_decay="linear")


def test_text_noise_perturbs_real_tokens_only_and_is_seeded(tmp_path):
    from streamedit_core.train.data import collate

    tr = Trainer(_cfg(tmp_path, text_noise=0.5))
    batch = collate([tr.dataset[p] for p in (0, 1)])
    batch["prompt"] = ["make it sepia", ""]
    clean = tr.text.lookup(batch["prompt"])
    noisy = tr._noisy_text(clean, [0, 1])
    s, n, m = clean.states[0], noisy.states[0], clean.masks[0]
    assert torch.equal(n[~m], s[~m])  # padding and the whole null prompt untouched
    delta = (n - s)[m]
    rms = s[m].pow(2).mean().sqrt()
    assert 0.3 * rms < delta.pow(2).mean().sqrt() < 0.7 * rms
    torch.testing.assert_close(tr._noisy_text(clean, [0, 1]).states[0], n)  # same positions, same noise
    assert not torch.equal(tr._noisy_text(clean, [2, 3]).states[0], n)
    with pytest.raises(ValueError, match="text_noise must be >= 0"):
        _cfg(tmp_path, text_noise=-0.1)


def test_filler_words_swap_in_encoded_variants_of_the_wording(tmp_path):
    from streamedit_core.train.data import collate

    tr = Trainer(_cfg(tmp_path, filler_words=1.0, filler_variants=3, prompt_dropout=0.0))
    prompts = tr.dataset.all_prompts()
    assert set(tr.fillers) == {p for p in prompts if p}
    assert all(v in tr.text._rows for vs in tr.fillers.values() for v in vs)  # encoded up front
    batch = collate([tr.dataset[p] for p in (0, 1)])
    got = tr._window(batch, [0, 1], 0)[5]
    for prompt, seen in zip(batch["prompt"], got):
        assert seen in tr.fillers[prompt] and len(seen.split()) == len(prompt.split()) + 1
    assert tr._window(batch, [0, 1], 0)[5] == got  # seeded by the sample
    assert tr._with_filler("", 0) == ""  # the null prompt stays null
    off = Trainer(_cfg(tmp_path, filler_words=0.0, out_dir=str(tmp_path / "off")))
    assert off.fillers == {} and off._window(batch, [0, 1], 0)[5] == batch["prompt"]
    with pytest.raises(ValueError, match="need filler_words in \\[0, 1\\]"):
        _cfg(tmp_path, filler_words=1.5)


def test_edit_map_fit_trains_only_the_map_and_lowers_its_loss(tmp_path):
    from streamedit_core.io.checkpoint import save_checkpoint
    from streamedit_core.config import PRESETS
    from streamedit_core.model import StreamEditModel
    from streamedit_core.train.data import collate

    tiny = PRESETS["tiny"]
    cfg = dataclasses.replace(tiny, dit=dataclasses.replace(tiny.dit, prediction="source_residual",
                                                            edit_map_rank=4))
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_checkpoint(StreamEditModel(cfg), init)
    fresh = Trainer(_cfg(tmp_path, init_checkpoint=str(init), prompt_dropout=0.0))
    fitted = Trainer(_cfg(tmp_path, init_checkpoint=str(init), prompt_dropout=0.0, edit_map_steps=40,
                          edit_map_batch=2, edit_map_lr=1e-2))

    batch = collate([fresh.dataset[p] for p in (0, 1)])
    src, x0, _, t, text, _ = fresh._window(batch, [0, 1], step=0)

    def map_loss(trainer):
        with torch.no_grad():
            return float((trainer.model.dit.edit_map_residual(src, text) - (x0 - src)).pow(2).mean())

    assert map_loss(fitted) < 0.7 * map_loss(fresh)
    changed = {n for (n, a), b in zip(fresh.model.dit.named_parameters(), fitted.model.dit.parameters())
               if not torch.equal(a, b)}
    assert changed and all(n.startswith(("text_pool.", "edit_map.")) for n in changed), sorted(changed)
    assert all(not p.requires_grad or p.grad is None for p in fitted.model.dit.text_pool.parameters())
    # The DiT's x0 is the source plus exactly this map while its transformer output is still zero.
    dit = fitted.model.dit.eval()
    with torch.no_grad():
        v = dit(src, t, src, text)
        x0_pred = src - t[:, None, :, None, None] * v
        expected = src + dit.edit_map_residual(src, text)
    in_flight = t > 0
    torch.testing.assert_close(x0_pred.movedim(2, 1)[in_flight], expected.movedim(2, 1)[in_flight],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs a DiT with an edit map"):
        Trainer(_cfg(tmp_path, edit_map_steps=2))
    with pytest.raises(ValueError, match="edit_map_steps is for task 'dit'"):
        _cfg(tmp_path, task="distill", edit_map_steps=2)


def test_edit_weighting_weighs_each_sample_by_its_edit_energy(tmp_path, monkeypatch):
    from streamedit_core.train import trainer as trainer_module
    from streamedit_core.train.data import collate
    from streamedit_core.train.losses import edit_energy, edit_weights

    # ((e + 0.1 mean) / mean)^-p: no edit weighs 10x (p = 1), the mean edit 1/1.1, 4x the mean 1/4.1.
    e = torch.tensor([0.0, 2.0, 8.0])
    torch.testing.assert_close(edit_weights(e, 2.0, 1.0), torch.tensor([10.0, 1 / 1.1, 1 / 4.1]))
    torch.testing.assert_close(edit_weights(e, 2.0, 0.5), torch.tensor([10.0, 1 / 1.1, 1 / 4.1]).sqrt())
    with pytest.raises(ValueError, match="the data has no edits"):
        edit_weights(e, 0.0, 1.0)

    seen = []
    real = trainer_module.flow_loss
    monkeypatch.setattr(trainer_module, "flow_loss",
                        lambda v, target, w, cw: seen.append(w) or real(v, target, w, cw))
    tr = Trainer(_cfg(tmp_path, edit_weighting=1.0))
    batch = collate([tr.dataset[p] for p in (0, 1)])
    src, x0 = tr._latents(batch)
    assert tr.mean_edit_energy == pytest.approx(float(edit_energy(src, x0).mean()))  # both pairs of the data
    with torch.no_grad():
        tr.dit_loss(batch, [0, 1], step=0)
    t = tr._window(batch, [0, 1], 0)[3]  # [B, T]
    expected = edit_weights(edit_energy(src, x0), tr.mean_edit_energy, 1.0)
    assert not torch.allclose(expected[0], expected[1])  # two edits of different size
    torch.testing.assert_close(seen[0], (t > 0).float() * expected[:, None])
    assert Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "off"))).mean_edit_energy is None
    # The distillation weighs its samples the same way (same seed: same STLE, same latents).
    teacher = Trainer(_cfg(tmp_path, steps=1, out_dir=str(tmp_path / "teacher"))).run()
    student = Trainer(_cfg(tmp_path, task="distill", init_checkpoint=str(teacher), teacher_steps=12,
                           teacher_cfg=1.0, edit_weighting=1.0, out_dir=str(tmp_path / "student")))
    seen.clear()
    with torch.no_grad():
        student.distill_loss(batch, [0, 1], step=0)
    history = student._window(batch, [0, 1], 0)[3] == 0
    torch.testing.assert_close(seen[0], (~history).float() * expected[:, None])

    with pytest.raises(ValueError, match="edit_weighting=3 must be in \\[0, 2\\]"):
        _cfg(tmp_path, edit_weighting=3)
    with pytest.raises(ValueError, match="edit_weighting is for tasks 'dit' and 'distill'"):
        _cfg(tmp_path, task="stle", edit_weighting=0.5)
    identity = dataclasses.replace(FIXED, identity_fraction=1.0)
    with pytest.raises(ValueError, match="all identity pairs"):
        Trainer(_cfg(tmp_path, data=identity, edit_weighting=0.5, out_dir=str(tmp_path / "id")))
