"""Tiny random-weight T5 / ByT5 / CLIP text encoders saved to disk like real ones.

`make_tiny_ensemble(root)` writes folders that `transformers.from_pretrained` reads exactly as
it reads UL2, ByT5 and MetaCLIP folders (config.json, model.safetensors, tokenizer files), plus
an ensemble.json naming them; tests of text.py and of the ComfyUI loader use it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("make", "it", "a", "the", "video", "red", "blue", "black", "and", "white", "convert",
         "to", "grayscale", "sky", "painting", "watercolor", "turn", "into")
LETTERS = "abcdefghijklmnopqrstuvwxyz"

T5_DIM, BYT5_DIM, CLIP_DIM = 32, 24, 16
T5_TOKENS, BYT5_TOKENS, CLIP_TOKENS = 12, 24, 10
CLIP_POSITIONS = 16


def t5_tokenizer():
    """A Unigram (SentencePiece-style) T5 tokenizer over a few words and single letters."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS] + [("\u2581", -2.0)]
    vocab += [(c, -5.0) for c in LETTERS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_tokenizer():
    """A byte-pair CLIP tokenizer: single letters plus merges for the words in WORDS."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for word in WORDS:  # merge left to right: m+a, ma+k, mak+e</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def save_t5(folder: Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_t5_spiece(folder: Path, seed: int = 4) -> Path:
    """A T5 folder in UL2's layout: the tokenizer is a SentencePiece spiece.model only."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel

    folder.mkdir(parents=True, exist_ok=True)
    sentences = [" ".join(WORDS[i:i + 4]) for i in range(len(WORDS))] * 4
    with open(folder / "spiece.model", "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=f,
                                       vocab_size=48, model_type="unigram", hard_vocab_limit=False,
                                       pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    size = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer",
                                                              "extra_ids": 0}))
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=size, d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(folder)
    return folder


def save_byt5(folder: Path, seed: int = 1) -> Path:
    """ByT5: a T5 encoder over the 384-entry byte vocabulary; no tokenizer files needed."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=384, d_model=BYT5_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=3)
    T5EncoderModel(cfg).save_pretrained(folder)
    return folder


def clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(clip_tokenizer()), hidden_size=CLIP_DIM, intermediate_size=32,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=CLIP_POSITIONS, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)


def save_clip_text(folder: Path, seed: int = 2) -> Path:
    """A text tower alone (what OpenCLIP conversions often ship)."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    CLIPTextModel(clip_text_config()).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return folder


def save_clip_full(folder: Path, seed: int = 3):
    """A whole CLIPModel (text + vision), the layout of MetaCLIP's folders; returns the model."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
                  image_size=32, patch_size=16)
    model = CLIPModel(CLIPConfig(text_config=clip_text_config().to_dict(), vision_config=vision,
                                 projection_dim=8)).eval()
    model.save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return model


def write_manifest(folder: Path, name: str, members: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ensemble.json").write_text(json.dumps({"name": name, "members": members}))
    return folder


def make_tiny_ensemble(root: Path, name: str = "tiny-paper") -> Path:
    """root/name/ with t5, byt5 and clip member folders and an ensemble.json; returns the folder."""
    folder = root / name
    save_t5(folder / "t5")
    save_byt5(folder / "byt5")
    save_clip_text(folder / "clip")
    return write_manifest(folder, name, [
        {"kind": "t5", "path": "t5", "max_tokens": T5_TOKENS},
        {"kind": "byt5", "path": "byt5", "max_tokens": BYT5_TOKENS},
        {"kind": "clip", "path": "clip", "max_tokens": CLIP_TOKENS},
    ])
