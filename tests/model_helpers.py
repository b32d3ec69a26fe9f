"""Models and stand-ins for tests, shared by tests/conftest.py, test modules and tests/comfyui/.

(Import from here, never `from conftest import ...`: two conftest.py files make that ambiguous.)
"""
from __future__ import annotations

import torch

from streamedit_core.config import RefinerConfig

SMALL_REFINER = RefinerConfig(width=8, film_hidden=16)  # a refiner small enough for tests

def make_live_tiny_model():
    """The `tiny` preset with its zero-initialised output layers (adaLN-zero, final linear)
    randomised (seed 1), so the DiT's velocity depends on every input (an untrained DiT
    predicts exactly 0)."""
    from streamedit_core.model import StreamEditModel

    model = StreamEditModel.from_preset("tiny", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.dit.named_parameters():
            if p.abs().max() == 0 and not name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def make_refined_model():
    """The live tiny model with a small refiner whose output layers are randomised (seed 2), so
    the refiner is not the identity."""
    from streamedit_core.train.refine import with_refiner

    model = with_refiner(make_live_tiny_model(), SMALL_REFINER)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in (*model.refiner.out.parameters(), *model.refiner.film[-1].parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


class FakeTextEncoder:
    """A deterministic stand-in for a TextEnsemble (one `sentence` member of `dim` x `tokens`):
    random token states seeded by each prompt's characters, every token real."""

    def __init__(self, tokens: int = 16, dim: int = 384) -> None:
        self.tokens, self.dim = tokens, dim

    def encode(self, prompts):
        from streamedit_core.types import TextEmbedding
        prompts = [prompts] if isinstance(prompts, str) else prompts
        rows = [torch.randn(1, self.tokens, self.dim, generator=torch.Generator().manual_seed(sum(map(ord, p))))
                for p in prompts]
        return TextEmbedding((torch.cat(rows),), (torch.ones(len(rows), self.tokens, dtype=torch.bool),))

    def sentence_vectors(self, prompts):
        """Unit mean token states [B, dim], as TextEnsemble.sentence_vectors."""
        return torch.nn.functional.normalize(self.encode(prompts).token_means()[0], dim=-1)

    def null(self, batch: int = 1):
        from streamedit_core.types import TextEmbedding
        return TextEmbedding((torch.zeros(batch, self.tokens, self.dim),),
                             (torch.zeros(batch, self.tokens, dtype=torch.bool),))
