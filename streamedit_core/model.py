"""StreamEditModel: the STLE and the DiT of one config, as one module (what a checkpoint holds)."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, get_preset
from .dit import StreamEditDiT
from .stle import STLE


class StreamEditModel(nn.Module):
    """`stle` (video <-> latents) and `dit` (the denoiser); the text encoders live apart
    (they are large, shared between models, and loaded from their own folders)."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, operations=None) -> None:
        super().__init__()
        self.config = config
        self.stle = STLE(config.stle, device=device, dtype=dtype, operations=operations)
        self.dit = StreamEditDiT(config.dit, device=device, dtype=dtype, operations=operations)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> "StreamEditModel":
        """A randomly initialised model of a preset, reproducible from `seed`."""
        config = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config, device=device, dtype=dtype)
        return model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameter counts of a config, built on the meta device (no memory needed)."""
    with torch.device("meta"):
        model = StreamEditModel(config)
    stle = sum(p.numel() for p in model.stle.parameters())
    dit = sum(p.numel() for p in model.dit.parameters())
    return {"stle": stle, "dit": dit, "total": stle + dit}
