"""torchrun with 2 CPU processes on gloo: DDP and FSDP2 (`fully_shard`) runs end with the
parameters of a single process trained on the same global batch; so does gradient accumulation."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from streamedit_core.train.config import TrainConfig
from streamedit_core.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = {"steps": 3, "text": "random", "global_batch": 4, "ema_decay": 0.5, "progress": False}


def _config(out_dir, **kw) -> TrainConfig:
    cfg = TrainConfig.from_file(REPO / "configs/train/tiny.json")
    return cfg.replace(**OVERRIDES, out_dir=str(out_dir), data=cfg.data.__class__(
        **{**cfg.data.__dict__, "length": 8}), **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, global batch 4, no accumulation."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("single")
        return Trainer(_config(out)).run()
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(tmp_path, single, mode):
    sets = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in OVERRIDES.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "streamedit_core", "train",
           "--config", str(REPO / "configs/train/tiny.json"), *sets, "--set", "data.length=8",
           "--set", f"parallel={mode}", "--out-dir", str(tmp_path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _max_diff(single, tmp_path / "model.safetensors") < 1e-5  # EMA weights, fp32 sums reordered
    assert _max_diff(single.with_name("train_state.safetensors"), tmp_path / "train_state.safetensors") < 1e-5


def test_gradient_accumulation_matches_one_big_batch(tmp_path, single):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = Trainer(_config(tmp_path, micro_batch=1)).run()
    finally:
        torch.set_num_threads(n)
    assert _max_diff(single, path) < 1e-5
