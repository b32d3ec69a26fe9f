"""What the StreamEdit nodes share: our ComfyUI types, model folders, safe file paths, devices,
progress, and the job a node runs in.

Only imported inside ComfyUI (the package's `__init__.py` checks for `comfy_api` first).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io
from comfy_execution.utils import get_executing_context

from ..streamedit_core.model import StreamEditModel
from ..streamedit_core.model.text import TextEnsemble
from ..streamedit_core.stream.editor import describe_prompts
from ..streamedit_core.stream.registry import REGISTRY, Stream
from ..streamedit_core.stream.schedule import PromptSchedule

log = logging.getLogger("StreamEdit")

CATEGORY = "StreamEdit"
MODEL_FOLDER = "streamedit"  # ComfyUI/models/streamedit/*.safetensors

READ_AS_TOOLTIP = ("Which of the model's known edits each prompt was read as (a model with a closed "
                   "vocabulary, like the shipped demo model, maps any prompt to its nearest known edit); "
                   "wire it to Preview Any to see it.")

# Our own socket types (what flows along the wires between our nodes).
ModelType = io.Custom("STREAMEDIT_MODEL")
TextEncoderType = io.Custom("STREAMEDIT_TEXT_ENCODER")
TextType = io.Custom("STREAMEDIT_TEXT")

STREAM_ID_TOOLTIP = ("Name of a stream whose state lives across queued jobs. Empty: the input is a "
                     "whole clip, edited from its start within this job.")
CHUNK_INDEX_TOOLTIP = ("Position of this chunk in the stream: 0 starts (or restarts) the stream, "
                       "then 1, 2, ... one per queued job. Set 'control after generate' to "
                       "'increment' to advance it automatically.")


# The demo model ships inside this package (models/streamedit_demo.safetensors), so the loader
# lists it without the user copying anything into ComfyUI's own models folder.
PACKAGE_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def register_folders() -> None:
    """Register models/streamedit/ with ComfyUI (also where extra_model_paths.yaml can add more),
    and this package's own models/ after it."""
    if MODEL_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (
            [os.path.join(folder_paths.models_dir, MODEL_FOLDER)], {".safetensors"})
    paths = folder_paths.folder_names_and_paths[MODEL_FOLDER][0]
    if PACKAGE_MODELS not in paths:
        paths.append(PACKAGE_MODELS)


def resolve_inside(folder: str, name: str, what: str) -> str:
    """Absolute path of `name` inside `folder`; ValueError for anything that leaves it
    (`../`, absolute paths, symlinks pointing out) or does not exist."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what}: no file name given")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{what} {name!r} is outside ComfyUI's folder {root}; only files inside "
                         "it can be used")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {name!r} does not exist in {root}")
    return path


class Managed(torch.nn.Module):
    """Holds the model for ComfyUI's ModelPatcher, which sets attributes such as `device` on
    the module it manages (our model's `device` is a read-only property)."""

    def __init__(self, model: StreamEditModel) -> None:
        super().__init__()
        self.streamedit = model


def manage(model: StreamEditModel) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(Managed(model), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@dataclass(frozen=True)
class LoadedModel:
    """What STREAMEDIT_MODEL carries: the model behind ComfyUI's model management.

    `patcher` lets ComfyUI move the weights to the compute device when a node needs them and
    back (or drop them) under memory pressure or on /free; call `get()` before every use.
    """
    patcher: comfy.model_patcher.ModelPatcher
    name: str
    attention: str | None  # None: the checkpoint's default backend

    @property
    def model(self) -> StreamEditModel:
        """The model wherever its weights are now (for its config; use `get()` to compute)."""
        return self.patcher.model.streamedit

    def get(self) -> StreamEditModel:
        mm.load_models_gpu([self.patcher])
        return self.model


def load_model(path: str, name: str, dtype: torch.dtype | None, attention: str | None) -> LoadedModel:
    from ..streamedit_core.io.checkpoint import load_checkpoint
    import comfy.ops

    # disable_weight_init: skip random init of weights the checkpoint overwrites anyway, and
    # let ComfyUI cast weights on the fly in low-VRAM mode.
    model = load_checkpoint(path, device=mm.unet_offload_device(), dtype=dtype,
                            operations=comfy.ops.disable_weight_init)
    return LoadedModel(manage(model), name, attention)


def pick_dtype(choice: str) -> torch.dtype | None:
    """'auto' = float32 on the CPU, else bfloat16/float16 where the device supports them."""
    if choice != "auto":
        return getattr(torch, choice)
    device = mm.get_torch_device()
    if device.type == "cpu":
        return torch.float32
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


@dataclass(frozen=True)
class EditText:
    """What STREAMEDIT_TEXT carries: the text encoder and the prompt schedule (one prompt, or
    prompts switched at given video frames)."""
    encoder: TextEnsemble
    schedule: PromptSchedule


def read_as(model: StreamEditModel, encoder, prompts: Sequence[str], strict: bool = False) -> str:
    """What the model reads the prompts as, one line each, for a `read_as` output and the console;
    a prompt it does not know is a warning, or with `strict` an error."""
    warnings, lines = describe_prompts(
        model, encoder, prompts, strict="strict is on: turn it off to edit it as the nearest" if strict else None)
    for warning in warnings:
        log.warning("StreamEdit: %s", warning)
    for line in lines:
        log.info("StreamEdit: %s", line)
    return "\n".join(["WARNING: " + w for w in warnings] + lines) or \
        "this model reads prompts as they are (it has no closed vocabulary)"


STRICT_TOOLTIP = ("Refuse a prompt the model does not know instead of editing it as the nearest edit it "
                  "knows (models with a closed vocabulary, like the shipped demo model).")


def show_warning(text: str) -> None:
    """A warning for the user: in the console (the core has logged it already) and as text on the
    node that runs (what ComfyUI's own nodes use to show a value on the node)."""
    from server import PromptServer

    context = get_executing_context()
    if context is not None and PromptServer.instance is not None:
        PromptServer.instance.send_progress_text(f"warning: {text}", context.node_id)


def progress_bar():
    """A `progress(done, total)` callback for the core's loops: ComfyUI's progress bar, and
    its interrupt (raised from the callback, between two latent frames)."""
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        total = max(total, done, 1)
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return progress


def open_stream(model: "LoadedModel", stream_id: str, chunk_index: int) -> Stream | None:
    """The stream this job works on (None for a whole clip: empty stream_id); the core registry
    commits or rolls it back when ComfyUI reports the job done (nodes/__init__.py)."""
    if not stream_id:
        return None
    context = get_executing_context()
    # The patcher is the stream's owner, held weakly: when ComfyUI drops the model (its loader's
    # output leaves the cache, /free) the stream is dropped too instead of keeping the model alive.
    return REGISTRY.open(stream_id, chunk_index, key=None, owner=model.patcher,
                         job=context.prompt_id if context is not None else None)


def check_model_latent(latent: dict, model: StreamEditModel, what: str) -> torch.Tensor:
    """The samples [B, C, t, h, w] of a LATENT, checked against the model; ValueError if not ours."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"{what}: expected a LATENT dict with 'samples', got {type(latent).__name__}")
    c = model.config.stle.latent_channels
    if samples.ndim != 5 or samples.shape[1] != c:
        raise ValueError(f"{what}: latent of shape {list(samples.shape)} does not fit the StreamEdit "
                         f"model {model.config.name!r}, which needs [B, {c}, t, h, w] from "
                         "StreamEdit STLE Encode (not an image-model latent)")
    return samples
