"""Model and text nodes: StreamEdit Model Loader, Text Ensemble Loader/Encode, Prompt Schedule."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..streamedit_core.config import PRESETS
from ..streamedit_core.model.text import TextEnsemble, list_ensembles
from ..streamedit_core.stream.schedule import PromptSchedule
from .common import (CATEGORY, MODEL_FOLDER, EditText, LoadedModel, ModelType, TextEncoderType, TextType,
                     load_model, manage, pick_dtype, resolve_inside)

FROM_CHECKPOINT = "from checkpoint"
RANDOM_WEIGHTS = "none (random weights)"
BUILTIN_MINILM = "minilm (built-in)"


def _checkpoints() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditModelLoader",
            display_name="StreamEdit Model Loader",
            category=CATEGORY,
            description="Loads a StreamEdit model (STLE autoencoder + DiT) from models/streamedit/ "
                        "or the demo model shipped with this package.",
            inputs=[
                io.Combo.Input("ckpt_name", options=_checkpoints() + [RANDOM_WEIGHTS],
                               tooltip="A .safetensors checkpoint in models/streamedit/ (or "
                                       "streamedit_demo.safetensors, shipped with StreamEdit), or "
                                       "random weights of a preset (for speed tests)."),
                io.Combo.Input("preset", options=[FROM_CHECKPOINT] + list(PRESETS), optional=True,
                               default=FROM_CHECKPOINT,
                               tooltip="Architecture. 'from checkpoint' reads it from the file; a "
                                       "named preset is checked against the file."),
                io.Combo.Input("dtype", options=["auto", "float32", "bfloat16", "float16"],
                               optional=True, default="auto",
                               tooltip="Weight dtype. auto: float32 on the CPU, bf16/fp16 on GPUs."),
                io.Combo.Input("attention", options=["auto", "dense", "dsa"], optional=True,
                               default="auto",
                               tooltip="Self-attention backend. auto: the checkpoint's default; dsa: "
                                       "dynamic sparse attention (faster on long windows)."),
            ],
            outputs=[ModelType.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str) -> bool:
        # Taking ckpt_name here turns off ComfyUI's "Value not in list" check, so that an unknown
        # name reaches execute and fails with our message listing what is there.
        return True

    @classmethod
    def fingerprint_inputs(cls, ckpt_name: str, **kwargs) -> float | str:
        path = folder_paths.get_full_path(MODEL_FOLDER, ckpt_name) if ckpt_name != RANDOM_WEIGHTS else None
        return os.path.getmtime(path) if path else ckpt_name

    @classmethod
    def execute(cls, ckpt_name: str, preset: str = FROM_CHECKPOINT, dtype: str = "auto",
                attention: str = "auto") -> io.NodeOutput:
        from ..streamedit_core.io.checkpoint import read_checkpoint_config
        from ..streamedit_core.model import StreamEditModel
        import comfy.model_management as mm

        backend = None if attention == "auto" else attention
        if ckpt_name == RANDOM_WEIGHTS:
            if preset == FROM_CHECKPOINT:
                raise ValueError(f"ckpt_name {RANDOM_WEIGHTS!r} needs a named preset, one of "
                                 f"{list(PRESETS)}")
            model = StreamEditModel.from_preset(preset, seed=0, dtype=pick_dtype(dtype),
                                                device=mm.unet_offload_device())
            return io.NodeOutput(LoadedModel(manage(model), f"random {preset}", backend))
        path = cls._find(ckpt_name)
        if preset != FROM_CHECKPOINT:
            found = read_checkpoint_config(path).name
            if found != preset:
                raise ValueError(f"checkpoint {ckpt_name!r} holds a {found!r} model, not the "
                                 f"{preset!r} preset; choose preset '{FROM_CHECKPOINT}' or {found!r}")
        return io.NodeOutput(load_model(path, ckpt_name, pick_dtype(dtype), backend))

    @staticmethod
    def _find(ckpt_name: str) -> str:
        available = _checkpoints()
        if ckpt_name not in available:
            roots = folder_paths.get_folder_paths(MODEL_FOLDER)
            raise ValueError(f"unknown checkpoint {ckpt_name!r}; models/streamedit/ ({', '.join(roots)}) "
                             f"holds {available or 'no .safetensors files'}")
        for root in folder_paths.get_folder_paths(MODEL_FOLDER):
            if os.path.isfile(os.path.join(root, ckpt_name)):
                return resolve_inside(root, ckpt_name, "checkpoint")
        raise ValueError(f"checkpoint {ckpt_name!r} disappeared from models/streamedit/")


def _ensembles() -> list[str]:
    names = []
    for root in folder_paths.get_folder_paths("text_encoders"):
        names += list_ensembles(root)
    return [BUILTIN_MINILM] + sorted(set(names))


class TextEnsembleLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditTextEnsembleLoader",
            display_name="StreamEdit Text Ensemble Loader",
            category=CATEGORY,
            description="Loads the text encoders a StreamEdit model was trained with.",
            inputs=[
                ModelType.Input("model", tooltip="The ensemble must match this model's text members."),
                io.Combo.Input("ensemble", options=_ensembles(), default=BUILTIN_MINILM,
                               tooltip="'minilm (built-in)': all-MiniLM-L6-v2 from its PyPI package; "
                                       "others: folders in models/text_encoders/ with an ensemble.json."),
            ],
            outputs=[TextEncoderType.Output(display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, model: LoadedModel, ensemble: str) -> io.NodeOutput:
        folder = None if ensemble == BUILTIN_MINILM else cls._find(ensemble)
        try:
            return io.NodeOutput(TextEnsemble.for_model(model.model.config, folder))
        except ValueError as e:
            raise ValueError(f"{model.name!r}: {e}") from e

    @staticmethod
    def _find(name: str) -> str:
        for root in folder_paths.get_folder_paths("text_encoders"):
            if name in list_ensembles(root):
                return os.path.join(root, name)
        raise ValueError(f"unknown text ensemble {name!r}; available: {_ensembles()}")


class TextEnsembleEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditTextEncode",
            display_name="StreamEdit Text Ensemble Encode",
            category=CATEGORY,
            description="Encodes the edit prompt (e.g. 'make it a pencil sketch'; the shipped demo model "
                        "knows 13 edits: `python -m streamedit_core info` lists them).",
            inputs=[
                TextEncoderType.Input("text_encoder"),
                io.String.Input("prompt", multiline=True, default="make it a pencil sketch",
                                tooltip="What the edited video should look like."),
            ],
            outputs=[TextType.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, text_encoder: TextEnsemble, prompt: str) -> io.NodeOutput:
        schedule = PromptSchedule.single(prompt)
        text_encoder.encode([prompt])  # encode now (cached): a bad prompt fails here
        return io.NodeOutput(EditText(text_encoder, schedule))


class PromptScheduleNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditPromptSchedule",
            display_name="StreamEdit Prompt Schedule",
            category=CATEGORY,
            description="Switches prompts at given video frames, blending over a transition.",
            inputs=[
                TextEncoderType.Input("text_encoder"),
                io.String.Input("schedule", multiline=True,
                                default="0: make it look like an old sepia photograph\n48: make it a pencil sketch",
                                tooltip="One 'frame: prompt' per line; the first at frame 0. Frames "
                                        "count from the start of the stream."),
                io.Int.Input("transition_frames", default=8, min=0, max=1024, optional=True,
                             tooltip="Video frames over which a new prompt is blended in (0: cut)."),
            ],
            outputs=[TextType.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, text_encoder: TextEnsemble, schedule: str,
                transition_frames: int = 8) -> io.NodeOutput:
        parsed = PromptSchedule.parse(schedule, transition_frames)
        text_encoder.encode(list(parsed.prompts))  # encode now (cached): a bad prompt fails here
        return io.NodeOutput(EditText(text_encoder, parsed))
