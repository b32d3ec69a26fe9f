"""Write `streamedit_core/data/filler_words.txt`: the words that training inserts into prompts
(`TrainConfig.filler_words`) so that the DiT's prompt reader learns to pass over words that name
no edit.

The words are the common whole words of MiniLM's WordPiece vocabulary (ids 1996-11999, which
BERT's vocabulary orders roughly by frequency; 3-12 letters), less every word of every benchmark
wording (all splits: the held-out wordings must stay unseen, and a training wording's words are
edit words), less the words whose MiniLM sentence vector is within cosine `MAX_COSINE` of a word
that names an edit (each family's `looks`, and a few colour and light words): "green" or
"darkness" put into "make it all blue" would teach the reader to ignore what it must read.

    python -m streamedit_core.train.fillers        # rewrites the file (offline, about 20 s)
"""
from __future__ import annotations

import re

import torch

from ..data.fillers import FILLER_FILE
from ..data.synthetic import FAMILIES, wording_words
from ..model.text import TextEnsemble, minilm_folder

VOCAB_IDS = (1996, 12000)  # BERT's whole-word entries start at 1996 ("the")
MAX_COSINE = 0.5
EXTRA_EDIT_WORDS = ("red", "blue", "green", "yellow", "purple", "dark", "bright", "light", "shadow",
                    "colour", "color", "sharp", "black", "white", "grey")


def main() -> None:
    vocab = (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    used = wording_words()
    candidates = [w for w in vocab[VOCAB_IDS[0]:VOCAB_IDS[1]]
                  if re.fullmatch(r"[a-z]{3,12}", w) and w not in used]
    edit_words = sorted({look for f in FAMILIES.values() for look in f.looks} | set(EXTRA_EDIT_WORDS))
    text = TextEnsemble.minilm()
    torch.set_num_threads(2)
    vec = torch.cat([text.sentence_vectors(candidates[i:i + 256])
                     for i in range(0, len(candidates), 256)])
    ref = text.sentence_vectors(edit_words)
    cosine = vec @ ref.T  # unit vectors
    keep = [w for w, c in zip(candidates, cosine.max(1).values.tolist()) if c < MAX_COSINE]
    header = f"# {len(keep)} filler words, written by python -m streamedit_core.train.fillers (read its docstring)\n"
    FILLER_FILE.write_text(header + "\n".join(keep) + "\n", encoding="utf-8")
    print(f"{len(keep)} of {len(candidates)} candidate words -> {FILLER_FILE}")


if __name__ == "__main__":
    main()
