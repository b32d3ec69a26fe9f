"""Filler words for training prompts (`TrainConfig.filler_words`): a common word that names no
edit, put into training wordings, teaches the DiT's prompt reader to pass over such words
(docs/demo-model.md, Filler words). The words (`filler_words.txt`, written by
`python -m streamedit_core.train.fillers`) exclude every word of every benchmark wording, so
held-out wordings stay unseen.
"""
from __future__ import annotations

import functools
import hashlib
import random
from pathlib import Path

FILLER_FILE = Path(__file__).with_name("filler_words.txt")


@functools.lru_cache(maxsize=1)
def filler_words() -> tuple[str, ...]:
    """The shipped filler words (comment lines skipped)."""
    if not FILLER_FILE.is_file():
        raise FileNotFoundError(f"filler word list missing: {str(FILLER_FILE)!r}; "
                                "rebuild it with python -m streamedit_core.train.fillers")
    lines = FILLER_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(w for w in (line.strip() for line in lines) if w and not w.startswith("#"))


def with_filler(prompt: str, rng: random.Random, words: tuple[str, ...]) -> str:
    """`prompt` with one word of `words` put between two of its words (or at either end)."""
    parts = prompt.split()
    parts.insert(rng.randint(0, len(parts)), rng.choice(words))
    return " ".join(parts)


def filler_variants(prompts: list[str], count: int, seed: int = 0) -> dict[str, tuple[str, ...]]:
    """`count` seeded variants of each non-empty prompt, one filler word each: a fixed set, so
    that training encodes them once with the other prompts (the text encoder never runs per
    step; on the 2-core CPU encoding the fillers per step made the edit-map fit 10x slower)."""
    if count < 1:
        raise ValueError(f"filler variants per prompt must be >= 1, got {count}")
    words = filler_words()
    out = {}
    for p in dict.fromkeys(prompts):
        if p.strip():
            digest = hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).digest()
            rng = random.Random(int.from_bytes(digest, "little"))
            out[p] = tuple(with_filler(p, rng, words) for _ in range(count))
    return out
