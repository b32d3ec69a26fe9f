"""Checkpoints: safetensors only (never pickle), with the model config in the metadata.

A checkpoint is one `.safetensors` file holding `StreamEditModel.state_dict()` (STLE + DiT,
including the STLE's latent statistics) and, in its string metadata,
- `streamedit_config`: the `ModelConfig` as JSON (what every tensor name and shape follows),
- `streamedit_format`: the file format version (`FORMAT_VERSION`),
- any `extra_metadata` the caller adds (training step, data, notes), as strings.

Files of an older format are read through a migration (`_migrate`; never rewritten in place):
- format 1 -> 2 (issue 47): the prompt anchors left the refiner for the model's vocabulary of
  edits. Config `refiner.anchors` (names) becomes `vocabulary.edits` (`VocabularyConfig`, with
  no wordings: format 1 did not store them) and the tensor `refiner.anchors` is read as
  `vocabulary.anchors`. A format-1 config with both is an error.
`read_checkpoint_config` gives the migrated config; `read_checkpoint_metadata` the stored strings.

Loading validates before it allocates: the header (read alone, a few KB) must be intact, carry a
config, and list exactly the tensors that config makes, with the same shapes. Every error names
the file and the first mismatch. Files are written to a temporary name and renamed, so a crash
mid-save never leaves a truncated checkpoint under the real name.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import PRESETS, ModelConfig
from ..model import StreamEditModel
from .files import discard, publish, temp_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # see the module docstring for what changed, and _migrate
# The demo model that ships in the checkout's models/ (`make train-demo` exports it).
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "streamedit_demo.safetensors"
CONFIG_KEY = "streamedit_config"
FORMAT_KEY = "streamedit_format"

_MAX_HEADER_BYTES = 100_000_000  # the safetensors limit
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


# --- Header --------------------------------------------------------------------------------

def _read_header(path: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(metadata, {tensor name: {"dtype", "shape", "data_offsets"}}) of a safetensors file,
    checking that the file is complete; reads the header only."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"checkpoint path {str(path)!r} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if _looks_like_pickle(path, head):
            raise ValueError(
                f"{str(path)!r} looks like a PyTorch pickle checkpoint; StreamEdit loads "
                "safetensors only (unpickling can run arbitrary code). Re-save the state dict with "
                "safetensors.torch.save_file, or with streamedit_core.io.checkpoint.save_checkpoint")
        bad = f"{str(path)!r} is not a valid safetensors file (truncated?)"
        if len(head) < 8:
            raise ValueError(f"{bad}: {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{bad}: header of {n} bytes in a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{bad}: unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{str(path)!r}: the safetensors metadata must be an object of strings, got "
                         f"{_short(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ValueError(f"{str(path)!r}: safetensors metadata {key!r} is {_short(value)} "
                             f"({type(value).__name__}); metadata values must be strings")
    spans = []
    for name, info in header.items():
        spans.append((*_check_entry(bad, name, info), name))
    end = 0
    for start, stop, name in sorted(spans):  # the data: tensor after tensor, no gap, no overlap
        if start != end:
            raise ValueError(f"{bad}: tensor {name!r} starts at byte {start} of the data, expected {end} "
                             "(the header's offsets overlap or leave a gap)")
        end = stop
    if 8 + n + end != size:
        raise ValueError(f"{bad}: the header describes {8 + n + end} bytes, the file has {size}")
    return metadata, header


def _check_entry(bad: str, name: str, info: Any) -> tuple[int, int]:
    """(start, stop) of a tensor's bytes, checked against its dtype and shape."""
    try:
        start, stop = info["data_offsets"]
        dtype, shape = info["dtype"], list(info["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{bad}: malformed entry for tensor {name!r}") from e
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (start, stop, *shape)):
        raise ValueError(f"{bad}: tensor {name!r} has offsets {[start, stop]} and shape {shape}; "
                         "expected non-negative integers")
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"{bad}: tensor {name!r} has unknown dtype {dtype!r}")
    need = math.prod(shape) * _DTYPE_BYTES[dtype]
    if stop - start != need:
        raise ValueError(f"{bad}: tensor {name!r} ({dtype}, shape {shape}) needs {need} bytes, its offsets "
                         f"{[start, stop]} span {stop - start}")
    return start, stop


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _looks_like_pickle(path: Path, head: bytes) -> bool:
    # torch.save writes a zip archive ("PK\x03\x04"); older torch and pickle.dump start with
    # the pickle protocol opcode 0x80. A safetensors file starts with a little-endian header size
    # smaller than the file, whose first byte may well be 0x80 too: only the size tells them apart.
    if head.startswith(b"PK\x03\x04"):
        return True
    if _plausible_safetensors(path, head):
        return False
    # A pickle goes on with its protocol number (2..5) and more opcodes; a (truncated)
    # safetensors header size below 4 GiB has zeros in its upper four bytes.
    pickle_opcodes = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return (pickle_opcodes and head[4:8] != bytes(4)) or path.suffix.lower() in _PICKLE_SUFFIXES


def _plausible_safetensors(path: Path, head: bytes) -> bool:
    return len(head) == 8 and struct.unpack("<Q", head)[0] < path.stat().st_size


def _read_streamedit_header(path: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """`_read_header`, plus the checks that make it a StreamEdit checkpoint this version reads."""
    metadata, entries = _read_header(path)
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{str(path)!r} is not a StreamEdit checkpoint: its safetensors metadata "
                         f"has no {CONFIG_KEY!r} (keys: {sorted(metadata)})")
    version = metadata.get(FORMAT_KEY, "")
    if not version.isdigit():
        raise ValueError(f"{str(path)!r}: bad {FORMAT_KEY!r} {version!r}; expected an integer")
    if int(version) > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint format {version}, newer than this "
                         f"StreamEdit reads ({FORMAT_VERSION}); update StreamEdit")
    return metadata, entries


def _parse_config(path: Path, metadata: dict[str, str]) -> tuple[ModelConfig, dict[str, str]]:
    """The model config of a checkpoint in today's layout, and {tensor name today: name stored}
    for the tensors an older format stored under another name (`_migrate`)."""
    try:
        config, renamed = _migrate(json.loads(metadata[CONFIG_KEY]), int(metadata[FORMAT_KEY]))
        return ModelConfig.from_dict(config), renamed
    except (ValueError, TypeError) as e:
        raise ValueError(f"{str(path)!r}: invalid model config in the metadata: {e}") from e


def _migrate(config: Any, version: int) -> tuple[Any, dict[str, str]]:
    """A stored config (the parsed JSON) of checkpoint format `version` in today's layout, and the
    tensors renamed on the way ({name today: name stored}). Format 1's prompt anchors
    (`refiner.anchors`) are format 2's vocabulary (`vocabulary.edits`, `vocabulary.anchors`)."""
    renamed: dict[str, str] = {}
    refiner = config.get("refiner") if isinstance(config, dict) else None
    if version < 2 and isinstance(refiner, dict) and "anchors" in refiner:
        if "vocabulary" in config:
            raise ValueError("the config has both refiner.anchors (format 1) and a vocabulary (format 2); "
                             "a file has one or the other")
        refiner = dict(refiner)
        edits = refiner.pop("anchors")
        config = {**config, "refiner": refiner}
        if edits:
            config["vocabulary"] = {"edits": edits}
            renamed["vocabulary.anchors"] = "refiner.anchors"
            log.debug("format %d: the refiner's prompt anchors %s read as the model's vocabulary", version, edits)
    return config, renamed


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """All string metadata of a StreamEdit checkpoint (config JSON, format, extras); header only."""
    return _read_streamedit_header(Path(path))[0]


def read_checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a checkpoint, from its header only (cheap: for listing/validating)."""
    path = Path(path)
    return _parse_config(path, read_checkpoint_metadata(path))[0]


# --- Save ----------------------------------------------------------------------------------

def save_checkpoint(model: StreamEditModel, path: str | os.PathLike,
                    extra_metadata: dict[str, Any] | None = None) -> None:
    """Write `model` (weights + config) to `path` (`.safetensors`), atomically.

    `extra_metadata`: string keys; values that are not strings are stored as JSON.
    """
    if not isinstance(model, StreamEditModel):
        raise TypeError(f"save_checkpoint expects a StreamEditModel, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path {str(path)!r} must end in .safetensors")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {str(path.parent)!r}")
    metadata = {}
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or key in (CONFIG_KEY, FORMAT_KEY):
            raise ValueError(f"extra_metadata key {key!r} must be a string other than "
                             f"{CONFIG_KEY!r} and {FORMAT_KEY!r}")
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    metadata[CONFIG_KEY] = model.config.to_json()
    metadata[FORMAT_KEY] = str(FORMAT_VERSION)

    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        if t.data_ptr() in seen and t.numel():  # safetensors refuses shared storage (tied weights)
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[name] = t

    tmp = temp_file(path, suffix=".tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        publish(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    log.info("saved checkpoint %s (%s, %d tensors)", path, model.config.name, len(tensors))


# --- Load ----------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, operations=None) -> StreamEditModel:
    """A `StreamEditModel` built from the checkpoint's config, weights loaded onto `device`
    (default CPU) and cast to `dtype` (default: as stored), in eval mode.

    Every tensor name and shape is checked against the config before any weight is read.
    `operations` is passed to the model's constructor (ComfyUI's injected layers).
    """
    path = Path(path)
    metadata, entries = _read_streamedit_header(path)
    config, renamed = _parse_config(path, metadata)
    with torch.device("meta"):
        model = StreamEditModel(config, operations=operations)
    expected = model.state_dict()  # meta tensors: names, shapes, dtypes, no memory
    stored = {name: renamed.get(name, name) for name in expected}  # the names in the file
    _check_entries(path, entries, {stored[name]: t for name, t in expected.items()})

    dev = torch.device(device) if device is not None else torch.device("cpu")
    state = {}
    try:
        with safe_open(str(path), framework="pt", device=str(dev)) as f:
            for name in expected:
                t = f.get_tensor(stored[name])
                state[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    except (OSError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file (truncated?): {e}") from e
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # internal: a tensor the state dict does not hold (non-persistent buffer)
        raise RuntimeError(f"load_checkpoint cannot materialise {left[:3]}: not in the state dict")
    log.info("loaded checkpoint %s (%s) on %s", path, config.name, dev)
    return model.eval()


def load_model(checkpoint: str | os.PathLike | None = None, *, preset: str | None = None, seed: int = 0,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StreamEditModel:
    """The one loader of the CLI, eval, training recipes and benchmarks: the model of a checkpoint
    file, or random weights of a preset (seeded by `seed`; for tests and speed work).

    dtype None: as stored, except on the CPU, which computes half precision slowly and
    imprecisely: a half-precision checkpoint (the shipped demo model) runs in float32 there.
    """
    if (checkpoint is None) == (preset is None):
        raise ValueError("give a model: a checkpoint (.safetensors) or a preset name "
                         f"(one of {sorted(PRESETS)}), not both")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        return StreamEditModel.from_preset(preset, seed=seed, device=device, dtype=dtype)
    on_cpu = torch.device(device if device is not None else "cpu").type == "cpu"
    return load_checkpoint(checkpoint, device=device, dtype=dtype or (torch.float32 if on_cpu else None))


def checkpoint_or_shipped(checkpoint: str | os.PathLike | None, preset: str | None) -> str | os.PathLike | None:
    """What a command loads when it names no model: the shipped demo model (said on stderr);
    otherwise the checkpoint it names (None for a preset)."""
    if checkpoint or preset:
        return checkpoint
    if not SHIPPED_MODEL.is_file():
        raise ValueError(f"give a model: --checkpoint FILE.safetensors or --preset NAME (one of "
                         f"{sorted(PRESETS)}); the shipped demo model {str(SHIPPED_MODEL)!r} is missing")
    print(f"using the shipped demo model {SHIPPED_MODEL} (--checkpoint to choose another)", file=sys.stderr)
    return SHIPPED_MODEL


def _check_entries(path: Path, entries: dict[str, dict[str, Any]],
                   expected: dict[str, torch.Tensor]) -> None:
    where = f"{str(path)!r} does not match its config"
    for name, t in expected.items():
        if name not in entries:
            raise ValueError(f"{where}: missing tensor {name!r} (shape {list(t.shape)})")
    for name in entries:
        if name not in expected:
            raise ValueError(f"{where}: unexpected tensor {name!r}")
    for name, t in expected.items():
        got = list(entries[name]["shape"])
        if got != list(t.shape):
            raise ValueError(f"{where}: tensor {name!r} has shape {got}, expected {list(t.shape)}")
        if (entries[name]["dtype"] in _FLOAT_DTYPES) != t.is_floating_point():
            raise ValueError(f"{where}: tensor {name!r} has dtype {entries[name]['dtype']}, "
                             f"expected {t.dtype}")
