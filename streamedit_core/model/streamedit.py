"""StreamEditModel: the STLE, the DiT and the optional parts (refiner, vocabulary) of one config,
as one module (what a checkpoint holds)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torch import Tensor

from ..config import ModelConfig, get_preset
from .dit import StreamEditDiT
from .refiner import PixelRefiner
from .stle import STLE
from .vocabulary import Reading, Vocabulary
from ..types import TextEmbedding


class StreamEditModel(nn.Module):
    """`stle` (video <-> latents), `dit` (the denoiser) and, where the config has them,
    `refiner` (see `refine`) and `vocabulary` (the closed set of edits the refiner reads every
    prompt as; see `read_prompt`), else None; the text encoders live apart (they are large,
    shared between models, and loaded from their own folders)."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, operations=None) -> None:
        super().__init__()
        self.config = config
        self.stle = STLE(config.stle, device=device, dtype=dtype, operations=operations)
        self.dit = StreamEditDiT(config.dit, device=device, dtype=dtype, operations=operations)
        view, members = config.refiner.prompt_view, sum(m.dim for m in config.dit.text_members)
        hidden = config.dit.hidden_size
        text_dim = {"dit": hidden, "text": members, "both": hidden + members}[view]
        self.refiner = (PixelRefiner(config.refiner, text_dim, ops=operations, device=device, dtype=dtype)
                        if config.refiner.width else None)
        # Matched on the refiner's view (VocabularyConfig.view "refiner", the one view there is).
        self.vocabulary = (Vocabulary(config.vocabulary, text_dim, device=device, dtype=dtype)
                           if config.vocabulary.edits else None)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> "StreamEditModel":
        """A randomly initialised model of a preset, reproducible from `seed`."""
        config = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config, device=device, dtype=dtype)
        return model.eval()

    def refine(self, edited: Tensor, source: Tensor, text: TextEmbedding) -> Tensor:
        """Edited latents [B, C, T, h, w] corrected by the pixel refiner from the source
        latents [B, C, T, h, w] under the prompt (batch B or 1); unchanged without a refiner.

        Both are viewed as frames through the STLE's linear path; the refiner's change of
        the frames is coded back and added, so an untrained refiner changes nothing.
        """
        if self.refiner is None:
            return edited
        dtype = next(self.refiner.parameters()).dtype
        pooled = self.refiner_prompt(text) if self.config.refiner.prompt else None  # [B or 1, D]
        if pooled is not None and self.vocabulary is not None:
            pooled = self.vocabulary.snap(pooled)  # the nearest edit's anchor (`read_prompt` says which)
        out_px = self.stle.linear_decode(edited)  # [B, 3, F, H, W]
        src_px = self.stle.linear_decode(source)
        b, _, f, h, w = out_px.shape

        def frames(x: Tensor) -> Tensor:  # [B, 3, F, H, W] -> [B*F, 3, H, W]
            return x.transpose(1, 2).reshape(b * f, 3, h, w).to(dtype)

        if pooled is not None:
            pooled = pooled.expand(b, -1).repeat_interleave(f, 0)  # [B*F, D]
        out = frames(out_px)
        delta = (self.refiner(out, frames(src_px), pooled) - out).reshape(b, f, 3, h, w).transpose(1, 2)
        return edited + self.stle.linear_encode_delta(delta).to(edited.dtype)

    def refiner_prompt(self, text: TextEmbedding) -> Tensor:
        """What a refiner that reads the prompt sees of it (`RefinerConfig.prompt_view`):
        [B, hidden_size], the DiT's pooled vector; [B, sum of member sizes], the members'
        token means side by side; or both, each part layer-normed (the refiner normalises
        what it reads as a whole, which would let the part of larger scale drown the other).
        Where the model has a vocabulary, `refine` gives the refiner the anchor of the nearest
        edit instead (`Vocabulary.snap`)."""
        text = text.to(self.device, next(self.refiner.parameters()).dtype)
        view = self.config.refiner.prompt_view
        parts = ([self.dit.pool_text(text)] if view in ("dit", "both") else []) + \
                ([torch.cat(text.token_means(), -1)] if view in ("text", "both") else [])
        if len(parts) == 1:
            return parts[0]
        return torch.cat([F.layer_norm(x, x.shape[-1:]) for x in parts], -1)

    @torch.no_grad()
    def read_prompt(self, text: TextEmbedding, wording_vectors: Tensor | None = None,
                    runners_up: int = 2) -> list[Reading] | None:
        """Which edit of the model's vocabulary each of the B prompts of `text` is read as, how far
        it is from it, the `runners_up` next nearest, and, given the wordings' sentence vectors
        (`vocabulary.wording_vectors(text_encoder)`), how well it is known (`Vocabulary.read`);
        None for a model without a vocabulary, which reads every prompt as it is. One host
        sync: call it once per prompt, not per chunk."""
        if self.vocabulary is None:
            return None
        sentence = None
        if wording_vectors is not None:  # the sentence member's vectors, as TextEnsemble.sentence_vectors
            member = [m.kind for m in self.config.dit.text_members].index("sentence")
            sentence = F.normalize(text.token_means()[member].float(), dim=-1)  # [B, d]
        return self.vocabulary.read(self.refiner_prompt(text), sentence, wording_vectors, runners_up)

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
    refiner = sum(p.numel() for p in model.refiner.parameters()) if model.refiner is not None else 0
    return {"stle": stle, "dit": dit, "refiner": refiner, "total": stle + dit + refiner}
