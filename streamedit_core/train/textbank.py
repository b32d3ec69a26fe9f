"""Prompt embeddings for training, encoded once: the text encoders never run per step."""
from __future__ import annotations

import hashlib
import logging

import torch

from ..config import TextMemberConfig
from ..types import TextEmbedding

log = logging.getLogger(__name__)


class RandomText:
    """A stand-in text encoder for tests where the wording does not matter: each prompt maps to
    fixed random token states (seeded by its hash) of the given member shapes; the empty prompt
    is the null embedding, as in `TextEnsemble`. Same duck type: encode(list) / null(batch)."""

    def __init__(self, member_configs: tuple[TextMemberConfig, ...]) -> None:
        self.member_configs = tuple(member_configs)

    def null(self, batch: int = 1) -> TextEmbedding:
        return TextEmbedding(tuple(torch.zeros(batch, c.max_tokens, c.dim) for c in self.member_configs),
                             tuple(torch.zeros(batch, c.max_tokens, dtype=torch.bool)
                                   for c in self.member_configs))

    def encode(self, prompts: str | list[str]) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = []
        for p in prompts:
            if not p.strip():
                rows.append(self.null(1))
                continue
            seed = int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little") >> 1
            g = torch.Generator().manual_seed(seed)
            n_tok = len(p.split()) + 2
            states, masks = [], []
            for c in self.member_configs:
                mask = torch.arange(c.max_tokens) < min(n_tok, c.max_tokens)
                states.append((torch.randn(1, c.max_tokens, c.dim, generator=g) * mask[:, None]))
                masks.append(mask.unsqueeze(0))
            rows.append(TextEmbedding(tuple(states), tuple(masks)))
        return TextEmbedding.cat(rows)


class TextBank:
    """Embeddings of a fixed prompt set, encoded in batches at construction (CPU float32).

    `lookup(prompts)` returns the batch's TextEmbedding; a prompt outside the set is encoded
    on first use (and kept), so manifests with many instructions still work.
    """

    def __init__(self, encoder, prompts: list[str], batch: int = 64) -> None:
        self.encoder = encoder
        self._rows: dict[str, TextEmbedding] = {}
        unique = list(dict.fromkeys(prompts))
        for i in range(0, len(unique), batch):
            self._add(unique[i:i + batch])
        log.info("encoded %d prompts for training", len(self._rows))

    def _add(self, prompts: list[str]) -> None:
        emb = self.encoder.encode(prompts)
        for j, p in enumerate(prompts):
            self._rows[p] = TextEmbedding(tuple(s[j:j + 1].clone() for s in emb.states),
                                          tuple(m[j:j + 1].clone() for m in emb.masks))

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, prompts: list[str]) -> TextEmbedding:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        if missing:
            self._add(missing)
        return TextEmbedding.cat([self._rows[p] for p in prompts])

    def null(self, batch: int = 1) -> TextEmbedding:
        return self.encoder.null(batch)
