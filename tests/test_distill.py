"""Hierarchical Progressive Distillation: a tiny student distilled 24 -> 12 -> 6 steps runs
CFG-free at 6 steps closer to the teacher's 24-step CFG output than the teacher itself does
at 6 steps without CFG."""
import pytest
import torch

from streamedit_core.io.checkpoint import load_checkpoint
from streamedit_core.stream.sampler import flow_timesteps, sample_offline
from streamedit_core.train.config import DataConfig, TrainConfig
from streamedit_core.train.data import collate
from streamedit_core.train.distill import segment_levels
from streamedit_core.model.text import RandomText
from streamedit_core.train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_segment_levels_snap_to_the_student_grid():
    t = torch.tensor([[0.0, 0.97, 0.5, 0.02]])
    t_a, t_m, t_c = segment_levels(t, 12, 3.0)
    grid = flow_timesteps(12, 3.0)
    assert float(t_a[0, 0]) == float(t_m[0, 0]) == float(t_c[0, 0]) == 0.0  # history stays clean
    for j in range(1, 4):
        k = int((grid[::2] == t_a[0, j]).nonzero())
        assert float(t_c[0, j]) == float(grid[2 * k + 2]) and float(t_m[0, j]) == float(grid[2 * k + 1])
        assert float(t_c[0, j]) < float(t[0, j]) <= float(t_a[0, j]) + 1e-6


def test_distilled_student_is_closer_to_the_cfg_teacher(tmp_path):
    data = DataConfig(frames=8, size=32, length=4, identity_fraction=0.0)
    teacher_cfg = TrainConfig(task="dit", text="random", data=data, steps=100, global_batch=4, lr=3e-3,
                              prompt_dropout=0.3, out_dir=str(tmp_path / "teacher"), progress=False)
    teacher_path = Trainer(teacher_cfg).run()
    distill_cfg = teacher_cfg.replace(task="distill", init_checkpoint=str(teacher_path), steps=120, lr=1e-3,
                                      prompt_dropout=0.0, teacher_steps=24, teacher_cfg=3.0,
                                      partitions=("uniform", "chunk1"), out_dir=str(tmp_path / "student"))
    trainer = Trainer(distill_cfg)
    student_path = trainer.run()

    teacher, student = load_checkpoint(teacher_path), load_checkpoint(student_path)
    assert (student.config.sampler.steps, student.config.sampler.cfg_scale) == (6, 1.0)
    text_encoder = RandomText(teacher.config.dit.text_members)
    batch = collate([trainer.dataset[i] for i in range(4)])
    with torch.no_grad():
        src = teacher.stle.encode(batch["source"])
    text, null = text_encoder.encode(batch["prompt"]), text_encoder.null(4)

    def run(model, steps, cfg_scale, seed):
        g = torch.Generator().manual_seed(seed)
        return sample_offline(model, src, text, steps, cfg_scale=cfg_scale, null_text=null, generator=g)

    mse_student = mse_plain = 0.0
    for seed in (11, 12):  # fresh noise, not the training draws
        reference = run(teacher, 24, 3.0, seed)
        mse_student += float((run(student, 6, 1.0, seed) - reference).pow(2).mean())
        mse_plain += float((run(teacher, 6, 1.0, seed) - reference).pow(2).mean())
    assert mse_student < 0.9 * mse_plain, (mse_student, mse_plain)
