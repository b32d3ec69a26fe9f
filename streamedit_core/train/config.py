"""Training run configs (frozen dataclasses, read from the JSON stage files in configs/train/).

One `TrainConfig` per run; a stage file holds its non-default fields. Unknown keys are a
ValueError naming the key (a config from another version, or a typo).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .partitions import check_partition

TASKS = ("stle", "dit", "distill")
DATA_KINDS = ("synthetic", "manifest", "latents")
PRECISIONS = ("fp32", "bf16", "auto")
LR_DECAYS = ("none", "cosine")
LOSS_WEIGHTINGS = ("flow", "x0")

# Fields that may differ between a run and its resume (they do not change the trajectory).
RESUME_FREE = ("steps", "out_dir", "log_every", "save_every", "progress")


@dataclass(frozen=True)
class DataConfig:
    kind: str = "synthetic"  # synthetic (photos + procedural edits) | manifest (JSONL) | latents (shards)
    path: str | None = None  # manifest file or latent shard folder
    frames: int = 8  # video frames per sample (a multiple of 4: 4 frames -> 1 latent frame)
    size: int = 32  # square crop side in pixels (a multiple of the model's spatial stride)
    split: str = "train"  # synthetic: which split of photos and paraphrases
    identity_fraction: float = 0.1  # synthetic: share of identity pairs (empty prompt)
    underexposed_fraction: float = 0.0  # synthetic: share of clips dimmed before the edit
    underexposed_families: tuple[str, ...] | None = None  # synthetic: edits whose clips may be dimmed (None: all)
    footage_fraction: float = 0.0  # synthetic, train split: share of clips from the train-only footage (train/footage.py)
    length: int | None = None  # synthetic: size of the index space (small = a fixed set)


@dataclass(frozen=True)
class TrainConfig:
    task: str = "dit"  # stle | dit | distill
    preset: str = "tiny"  # model preset when no init_checkpoint is given
    init_checkpoint: str | None = None  # start from these weights (later stages; distill: the teacher)
    text: str = "minilm"  # minilm (built-in) | random (tests: wording does not matter) | an ensemble folder
    text_cache: str | None = None  # prompt embeddings written by `train --encode-text` (no encoder loaded)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    global_batch: int = 8  # samples per optimizer step over all ranks
    micro_batch: int = 0  # per rank per forward; 0 = global_batch / world (no accumulation)
    lr: float = 5e-5  # the paper's base-stage rate; later stages 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "none"  # none | cosine: after warmup, cosine from lr down to 0 at the last step
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.0  # 0 = no EMA; else the exported weights are the EMA
    seed: int = 0
    # SCM objective and ASW partitions
    temporal_weight: float = 0.1  # lambda of the temporal-consistency term
    motion_compensation: bool = False  # align consecutive frames by the source's global motion
    partitions: tuple[str, ...] = ("uniform", "chunk1", "chunk2")
    history_max: int = 2  # clean history latent frames at most in a training window
    shift: float = 3.0  # timestep shift of the flow schedule (as the samplers)
    prompt_dropout: float = 0.1  # share of samples trained as (null prompt -> source) for CFG
    text_noise: float = 0.0  # Gaussian noise on the prompt's token states, times their RMS (0 = off)
    filler_words: float = 0.0  # share of prompts given one filler word that names no edit (data/fillers.py)
    filler_variants: int = 8  # fixed filler variants of each wording, encoded once
    loss_weighting: str = "flow"  # flow: velocity MSE | x0: the implied clean latent's error (weight t^2)
    pixel_weighting: float = 0.0  # p: weigh latent channel c by latent_std[c]^(2p), mean 1 (1 = decoded pixels)
    edit_weighting: float = 0.0  # p: weigh each sample by its edit energy^-p (train.losses.edit_weights; 0 = equal)
    edit_map_steps: int = 0  # dit with an edit map: fit the map alone this many steps first (Trainer.fit_edit_map)
    edit_map_batch: int = 64  # ... of this many latent samples
    edit_map_lr: float = 3e-3  # ... at this peak rate (cosine)
    # STLE objective
    pca_samples: int = 32  # a new STLE starts at the PCA of this many items (with steps 0, that is the STLE)
    ssim_weight: float = 0.2
    stream_weight: float = 0.1  # consistency of a stream started one latent frame later
    # distillation
    teacher_steps: int = 24  # the CFG teacher's steps (6 * 2^k)
    target_steps: int = 6
    teacher_cfg: float = 3.0
    # system
    parallel: str = "auto"  # auto (ddp under torchrun) | none | ddp | fsdp
    precision: str = "fp32"  # fp32 | bf16 (autocast, fp32 weights) | auto: bf16 where the hardware computes it
    grad_checkpointing: bool = False
    device: str | None = None  # default: cuda:LOCAL_RANK if available, else cpu
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    out_dir: str = "runs/train"
    progress: bool = True  # tqdm bar (rank 0, and only on a TTY)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.data.kind not in DATA_KINDS:
            raise ValueError(f"unknown data kind {self.data.kind!r}; expected one of {DATA_KINDS}")
        if self.data.kind != "synthetic" and not self.data.path:
            raise ValueError(f"data kind {self.data.kind!r} needs data.path")
        if self.task == "stle" and self.data.kind == "latents":
            raise ValueError("task 'stle' trains on pixels: data.kind must be 'synthetic' or 'manifest', "
                             "not 'latents'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {PRECISIONS}")
        if self.steps < 0 or self.global_batch < 1 or self.micro_batch < 0:
            raise ValueError(f"need steps >= 0, global_batch >= 1, micro_batch >= 0; got steps={self.steps}, "
                             f"global_batch={self.global_batch}, micro_batch={self.micro_batch}")
        if self.data.frames % 4 or self.data.frames < 4:
            raise ValueError(f"data.frames={self.data.frames} must be a positive multiple of 4")
        if not self.partitions:
            raise ValueError("partitions must name at least one scheme")
        for p in self.partitions:
            check_partition(p)
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; expected one of {LR_DECAYS}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {self.loss_weighting!r}; expected one of {LOSS_WEIGHTINGS}")
        if not 0 <= self.pixel_weighting <= 1:
            raise ValueError(f"pixel_weighting={self.pixel_weighting} must be in [0, 1]")
        if not 0 <= self.edit_weighting <= 2:
            raise ValueError(f"edit_weighting={self.edit_weighting} must be in [0, 2]")
        if self.edit_weighting and self.task == "stle":
            raise ValueError("edit_weighting is for tasks 'dit' and 'distill', not 'stle'")
        if self.pca_samples < 1:
            raise ValueError(f"need pca_samples >= 1, got {self.pca_samples}")
        if self.edit_map_steps < 0 or self.edit_map_batch < 1 or self.edit_map_lr <= 0:
            raise ValueError(f"need edit_map_steps >= 0, edit_map_batch >= 1, edit_map_lr > 0; got "
                             f"{self.edit_map_steps}, {self.edit_map_batch}, {self.edit_map_lr}")
        if self.edit_map_steps and self.task != "dit":
            raise ValueError(f"edit_map_steps is for task 'dit' (a fresh DiT), not {self.task!r}")
        if self.text_noise < 0:
            raise ValueError(f"text_noise must be >= 0, got {self.text_noise}")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {self.prompt_dropout}")
        if not 0.0 <= self.filler_words <= 1.0 or self.filler_variants < 1:
            raise ValueError(f"need filler_words in [0, 1] and filler_variants >= 1, got "
                             f"{self.filler_words}, {self.filler_variants}")
        if self.task == "distill":
            n, k = self.teacher_steps, 0
            while n > self.target_steps and n % 2 == 0:
                n, k = n // 2, k + 1
            if n != self.target_steps or k == 0:
                raise ValueError(f"teacher_steps={self.teacher_steps} must be target_steps={self.target_steps} "
                                 "times a power of two (>= 2), e.g. 24, 48, 96 for 6")

    def micro_for(self, world: int) -> tuple[int, int]:
        """(micro_batch, accumulation steps) for `world` ranks; ValueError if G does not split."""
        micro = self.micro_batch or self.global_batch // world
        if micro < 1 or self.global_batch % (micro * world):
            raise ValueError(f"global_batch={self.global_batch} is not a multiple of micro_batch={micro} x "
                             f"world size {world}")
        return micro, self.global_batch // (micro * world)

    def distill_rounds(self) -> list[tuple[int, int]]:
        """[(teacher steps, student steps)], e.g. 24 -> 12 -> 6 gives [(24, 12), (12, 6)]."""
        rounds, n = [], self.teacher_steps
        while n > self.target_steps:
            rounds.append((n, n // 2))
            n //= 2
        return rounds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        data = dict(d.pop("data", {}))
        _check_keys(DataConfig, data, "data")
        if data.get("underexposed_families") is not None:
            data["underexposed_families"] = tuple(data["underexposed_families"])
        _check_keys(cls, d, "train config")
        if "partitions" in d:
            d["partitions"] = tuple(d["partitions"])
        return cls(data=DataConfig(**data), **d)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train config not found: {str(path)!r}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"train config {str(path)!r} is not valid JSON: {e}") from e
        d.pop("_comment", None)
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"train config {str(path)!r}: {e}") from e


def _check_keys(cls: type, d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)} - {"data"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")


def resume_mismatch(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Fields (besides RESUME_FREE) where a saved run's config differs from `current`. A field
    that the saved config lacks (added to TrainConfig after that run started) counts as its
    default, which keeps the behaviour from before the field existed."""
    now = current.to_dict()
    default = TrainConfig().to_dict()
    saved = {**default, **saved, "data": {**default["data"], **saved.get("data", {})}}
    keys = sorted((set(saved) | set(now)) - set(RESUME_FREE))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}"
            for k in keys if _norm(saved.get(k)) != _norm(now.get(k))]


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v))
