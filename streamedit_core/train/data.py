"""Training data: a JSONL manifest of video pairs, latent shards, and the batch order.

Manifest: one JSON object per line, paths relative to the manifest's folder (or absolute):
    {"source": "clips/0001_src.mp4", "target": "clips/0001_edit.mp4", "instruction": "make it sepia"}
An empty instruction is an identity pair (target == source). Rows are checked when the
manifest is read (JSON, keys, files exist: bad rows are reported with their line number and
skipped); a video that fails to decode, or a pair whose lengths/sizes differ, is reported when
it is read, skipped (the next row is used instead) and counted in `skipped`.

Every item is a function of (seed, position): the sample at position p of the run is
row perm_epoch[p % rows] with a crop drawn from (seed, p). The training loop consumes positions
step * global_batch ... so the data position of a run is just its step.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

log = logging.getLogger(__name__)

MAX_SKIPS = 16  # consecutive bad rows before an item gives up (the data is mostly broken)


@functools.lru_cache(maxsize=4)  # an item asks for its row: reshuffling n rows per item cost 0.6 ms
def epoch_permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    perm = list(range(n))
    random.Random(f"perm:{seed}:{epoch}").shuffle(perm)
    return tuple(perm)


def row_for_position(n: int, seed: int, position: int) -> int:
    epoch, offset = divmod(int(position), n)
    return epoch_permutation(n, seed, epoch)[offset]


class BadSample(ValueError):
    """A manifest row whose videos cannot be used (message names the row and the path)."""


class ManifestDataset:
    """(source, target, instruction) clips from a JSONL manifest of video files (PyAV).

    Item: {"source", "target": [3, frames, size, size] float32 in [0, 1], "prompt": str}, a
    random clip of `frames` consecutive frames and the same random size x size crop of both.
    """

    def __init__(self, manifest: str | Path, *, frames: int = 16, size: int = 64, seed: int = 0) -> None:
        self.path = Path(manifest)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {str(self.path)!r}")
        self.frames, self.size, self.seed = frames, size, seed
        self.rows: list[tuple[int, Path, Path, str]] = []  # (line number, source, target, prompt)
        self.bad_rows: list[str] = []
        root = self.path.parent
        for line_no, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            problem = None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"not valid JSON ({e.msg})"
            else:
                if not isinstance(row, dict) or not {"source", "target", "instruction"} <= set(row):
                    problem = "needs the keys 'source', 'target' and 'instruction'"
                elif not isinstance(row["instruction"], str):
                    problem = f"'instruction' must be a string, got {row['instruction']!r}"
                else:
                    src, tgt = root / str(row["source"]), root / str(row["target"])
                    missing = [str(p) for p in (src, tgt) if not p.is_file()]
                    if missing:
                        problem = f"video not found: {missing[0]!r}"
            if problem:
                self.bad_rows.append(f"{self.path}:{line_no}: {problem}")
                log.warning("manifest %s row %d skipped: %s", self.path, line_no, problem)
            else:
                self.rows.append((line_no, src, tgt, row["instruction"]))
        if not self.rows:
            raise ValueError(f"manifest {str(self.path)!r} has no usable rows "
                             f"({len(self.bad_rows)} bad: {self.bad_rows[:3]})")
        self.skipped = len(self.bad_rows)  # grows as unreadable videos are found during the run

    def __len__(self) -> int:
        return len(self.rows)

    def all_prompts(self) -> list[str]:
        return sorted({r[3] for r in self.rows})

    def __getitem__(self, position: int) -> dict:
        for attempt in range(MAX_SKIPS):
            row = row_for_position(len(self.rows), self.seed, position + attempt)
            try:
                return self.load(row, random.Random(f"crop:{self.seed}:{position}"))
            except BadSample as e:
                self.skipped += 1
                log.warning("skipped (%d so far): %s", self.skipped, e)
        raise ValueError(f"manifest {str(self.path)!r}: {MAX_SKIPS} bad rows in a row at position "
                         f"{position}; check the data")

    def load(self, index: int, rng: random.Random) -> dict:
        """Row `index` (0-based among the usable rows) with crop randomness from rng."""
        from ..io.video import VideoReader

        line_no, src_path, tgt_path, prompt = self.rows[index]
        where = f"manifest {self.path} row {line_no}"
        try:
            src_reader, tgt_reader = VideoReader(src_path), VideoReader(tgt_path)
        except (OSError, ValueError) as e:
            raise BadSample(f"{where}: cannot open video: {e}") from e
        if (src_reader.width, src_reader.height) != (tgt_reader.width, tgt_reader.height):
            raise BadSample(f"{where}: source {src_path} is {src_reader.width}x{src_reader.height} but "
                            f"target {tgt_path} is {tgt_reader.width}x{tgt_reader.height}")
        if src_reader.num_frames != tgt_reader.num_frames:
            raise BadSample(f"{where}: source {src_path} has {src_reader.num_frames} frames but "
                            f"target {tgt_path} has {tgt_reader.num_frames}")
        if src_reader.num_frames < self.frames or min(src_reader.width, src_reader.height) < self.size:
            raise BadSample(f"{where}: {src_path} ({src_reader.num_frames} frames of "
                            f"{src_reader.width}x{src_reader.height}) is smaller than a training clip "
                            f"({self.frames} frames of {self.size}x{self.size})")
        start = rng.randrange(src_reader.num_frames - self.frames + 1)
        y0 = rng.randrange(src_reader.height - self.size + 1)
        x0 = rng.randrange(src_reader.width - self.size + 1)
        clips = []
        for reader, path in ((src_reader, src_path), (tgt_reader, tgt_path)):
            try:
                clip = _read_frames(reader, start, self.frames)
            except Exception as e:  # PyAV raises many types for a corrupt stream
                raise BadSample(f"{where}: cannot decode {path}: {type(e).__name__}: {e}") from e
            if clip.shape[0] < self.frames:
                raise BadSample(f"{where}: {path} ended after {clip.shape[0] + start} frames "
                                f"(header said {reader.num_frames})")
            crop = clip[:, y0:y0 + self.size, x0:x0 + self.size]  # [T, size, size, 3]
            clips.append(crop.permute(3, 0, 1, 2).contiguous())  # [3, T, size, size]
        return {"source": clips[0], "target": clips[1], "prompt": prompt}


def _read_frames(reader, start: int, count: int) -> Tensor:
    """Frames [start, start + count) of a VideoReader as [T, H, W, 3], decoding no further."""
    out, seen = [], 0
    for chunk in reader:
        lo, hi = max(start - seen, 0), min(start + count - seen, chunk.shape[0])
        if hi > lo:
            out.append(chunk[lo:hi])
        seen += chunk.shape[0]
        if seen >= start + count:
            break
    return torch.cat(out) if out else torch.zeros(0, reader.height, reader.width, 3)


# --- Latent shards ----------------------------------------------------------------------------
@torch.no_grad()
def encode_latent_shards(stle, dataset, out_dir: str | Path, count: int, *, shard_size: int = 256,
                         batch: int = 8, device: torch.device | str | None = None) -> list[Path]:
    """Encode the first `count` positions of `dataset` with the STLE into safetensors shards
    (`shard_00000.safetensors`, ...: tensors source/target [N, C, t, h, w], prompts in the
    metadata), so DiT training does not run the STLE every step."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(stle.parameters()).device
    paths = []
    for shard_start in range(0, count, shard_size):
        src, tgt, prompts = [], [], []
        for b0 in range(shard_start, min(shard_start + shard_size, count), batch):
            items = [dataset[p] for p in range(b0, min(b0 + batch, shard_start + shard_size, count))]
            src.append(stle.encode(torch.stack([i["source"] for i in items]).to(device)).float().cpu())
            tgt.append(stle.encode(torch.stack([i["target"] for i in items]).to(device)).float().cpu())
            prompts += [i["prompt"] for i in items]
        path = out_dir / f"shard_{shard_start // shard_size:05d}.safetensors"
        save_file({"source": torch.cat(src).contiguous(), "target": torch.cat(tgt).contiguous()},
                  str(path), metadata={"prompts": json.dumps(prompts), "format": "streamedit-latents-1"})
        paths.append(path)
    log.info("wrote %d latent shards (%d samples) to %s", len(paths), count, out_dir)
    return paths


class LatentShardDataset:
    """Pre-encoded (source, target) latents from `encode_latent_shards`, read lazily (the shards
    are memory-mapped; only the headers are read here, so the data set may exceed RAM).

    Item: {"source_latents", "target_latents": [C, t, h, w] float32, "prompt": str}.
    """

    def __init__(self, folder: str | Path, *, seed: int = 0) -> None:
        folder = Path(folder)
        self.paths = sorted(folder.glob("shard_*.safetensors"))
        if not self.paths:
            raise FileNotFoundError(f"no latent shards (shard_*.safetensors) in {str(folder)!r}")
        self.index: list[tuple[int, int]] = []  # position in the data set -> (shard, row)
        self.prompts: list[str] = []
        shapes = set()
        for k, path in enumerate(self.paths):
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    s, t = f.get_slice("source").get_shape(), f.get_slice("target").get_shape()
            except Exception as e:
                raise ValueError(f"latent shard {str(path)!r} is not readable: {e}") from e
            prompts = json.loads(meta.get("prompts", "null") or "null")
            if not isinstance(prompts, list) or len(prompts) != s[0] or s != t:
                raise ValueError(f"latent shard {str(path)!r}: source {tuple(s)}, target {tuple(t)} and "
                                 f"{len(prompts or [])} prompts do not match")
            shapes.add(tuple(s[1:]))
            self.index += [(k, r) for r in range(s[0])]
            self.prompts += prompts
        if len(shapes) != 1:
            raise ValueError(f"latent shards in {str(folder)!r} have different latent shapes {sorted(shapes)}")
        self.seed, self.skipped = seed, 0
        self._handles: dict[int, object] = {}  # shard -> open safe_open handle, per process
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # open handles do not pickle (spawned loader workers)
        return {**self.__dict__, "_handles": {}}

    def _shard(self, k: int):
        """The open handle of shard k, opened once per process (opening the shard again for
        every row took 0.17 ms a row, five times the read itself)."""
        if self._pid != os.getpid():  # a forked loader worker opens its own
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.paths[k]), framework="pt")
        return self._handles[k]

    def __len__(self) -> int:
        return len(self.index)

    def all_prompts(self) -> list[str]:
        return sorted(set(self.prompts))

    def row(self, i: int) -> dict:
        """Row i in shard order (not permuted)."""
        k, r = self.index[i]
        f = self._shard(k)
        src, tgt = f.get_slice("source")[r:r + 1][0], f.get_slice("target")[r:r + 1][0]
        return {"source_latents": src.float(), "target_latents": tgt.float(), "prompt": self.prompts[i]}

    def __getitem__(self, position: int) -> dict:
        return self.row(row_for_position(len(self), self.seed, position))


# --- Batch order ------------------------------------------------------------------------------
def step_positions(step: int, global_batch: int, micro_batch: int, micro: int, rank: int,
                   world: int) -> list[int]:
    """Data positions of micro-batch `micro` of `step` on `rank`.

    A step consumes positions [step * G, (step + 1) * G); micro-batch m of rank r takes the
    slice starting at (m * world + r) * micro_batch. The union over ranks and micro-batches is
    the same for any (world, accumulation) split of G: that is what makes a 2-process run match
    a 1-process run, and resume a matter of the step number.
    """
    start = step * global_batch + (micro * world + rank) * micro_batch
    return list(range(start, start + micro_batch))


def collate(items: list[dict]) -> dict:
    out: dict = {"prompt": [i["prompt"] for i in items]}
    for key in items[0]:
        if key != "prompt":
            out[key] = torch.stack([i[key] for i in items])
    return out


def iterate_batches(dataset, step: int, global_batch: int, micro_batch: int, rank: int,
                    world: int) -> Iterator[tuple[list[int], dict]]:
    """The micro-batches of `step` on this rank: (positions, collated batch)."""
    for m in range(global_batch // (micro_batch * world)):
        positions = step_positions(step, global_batch, micro_batch, m, rank, world)
        yield positions, collate([dataset[p] for p in positions])
