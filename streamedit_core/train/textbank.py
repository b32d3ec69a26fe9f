"""Prompt embeddings for training, encoded once: the text encoders never run per step."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import TextMemberConfig
from ..types import TextEmbedding

log = logging.getLogger(__name__)


class TextBank:
    """Embeddings of a fixed prompt set, encoded in batches at construction (CPU float32).

    `lookup(prompts)` returns the batch's TextEmbedding; a prompt outside the set is encoded
    on first use (and kept), so manifests with many instructions still work.
    """

    def __init__(self, encoder, prompts: list[str], batch: int = 64) -> None:
        self.encoder = encoder
        self._rows: dict[str, TextEmbedding] = {}
        if isinstance(encoder, CachedText):
            self._rows = dict(encoder.rows)
            prompts = [p for p in prompts if p not in self._rows]
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


def save_text_cache(encoder, prompts: list[str], path: str | Path, batch: int = 64) -> Path:
    """Encode `prompts` once and write them to a safetensors file (`text_cache` in a train
    config): the ranks of a run then load embeddings instead of the (large) text encoders."""
    path = Path(path)
    bank = TextBank(encoder, [""] + list(prompts), batch=batch)
    names = list(bank._rows)
    tensors = {}
    for i, p in enumerate(names):
        emb = bank._rows[p]
        for m, (s, k) in enumerate(zip(emb.states, emb.masks)):
            tensors[f"{i}.{m}.states"] = s[0].contiguous()
            tensors[f"{i}.{m}.mask"] = k[0].contiguous()
    configs = [[c.kind, c.dim, c.max_tokens] for c in encoder.member_configs]
    save_file(tensors, str(path), metadata={"prompts": json.dumps(names), "members": json.dumps(configs),
                                            "format": "streamedit-text-cache-1"})
    log.info("wrote %d prompt embeddings to %s", len(names), path)
    return path


class CachedText:
    """Embeddings read from `save_text_cache`'s file; a prompt it does not hold is an error."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"text cache not found: {str(self.path)!r}")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            prompts = json.loads(meta["prompts"])
            self.member_configs = tuple(TextMemberConfig(*c) for c in json.loads(meta["members"]))
        except Exception as e:
            raise ValueError(f"{str(self.path)!r} is not a StreamEdit text cache: {e}") from e
        n = len(self.member_configs)
        self.rows = {p: TextEmbedding(tuple(tensors[f"{i}.{m}.states"][None] for m in range(n)),
                                      tuple(tensors[f"{i}.{m}.mask"][None] for m in range(n)))
                     for i, p in enumerate(prompts)}

    def null(self, batch: int = 1) -> TextEmbedding:
        return TextEmbedding.null(self.member_configs, batch)

    def encode(self, prompts: str | list[str]) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = [p for p in prompts if p not in self.rows and p.strip()]
        if missing:
            raise ValueError(f"prompt {missing[0]!r} is not in the text cache {str(self.path)!r} "
                             f"({len(self.rows)} prompts); rebuild it with --encode-text")
        return TextEmbedding.cat([self.rows[p] if p.strip() else self.null(1) for p in prompts])
