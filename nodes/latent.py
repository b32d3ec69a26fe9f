"""Latent nodes: STLE Encode, StreamEdit DiT Sampler, STLE Decode, Reset Stream.

With an empty `stream_id` the three nodes edit a whole clip within one job. With a `stream_id`
they continue that stream chunk by chunk across queued jobs, each keeping its part of the stream
(encoder cache, editor, decoder cache) in the core's stream registry; the work is the core's
latent path (`streamedit_core.stream.latents`), so the frames equal the core editor's whatever
the chunking.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..streamedit_core.stream.editor import StreamEditor
from ..streamedit_core.stream.latents import decode_latents, encode_frames, sample_latents
from ..streamedit_core.stream.registry import REGISTRY, check_editor_settings
from .common import (CATEGORY, CHUNK_INDEX_TOOLTIP, READ_AS_TOOLTIP, STREAM_ID_TOOLTIP, STRICT_TOOLTIP, EditText,
                     LoadedModel, ModelType, TextType, check_model_latent, open_stream, progress_bar, read_as)

FRAMES_KEY = "streamedit_frames"  # LATENT entry: video frames the latents stand for (tail padding)


def _stream_inputs() -> list[io.Input]:
    return [
        io.String.Input("stream_id", default="", optional=True, tooltip=STREAM_ID_TOOLTIP),
        io.Int.Input("chunk_index", default=0, min=0, max=2**31 - 1, optional=True,
                     control_after_generate=True, tooltip=CHUNK_INDEX_TOOLTIP),
    ]


def _stream_fingerprint(stream_id: str) -> float | str:
    # A node holding stream state must run on every queued job: NaN never equals itself.
    # stream_id is None when it comes through a link that is not computed yet: assume a stream.
    return "" if stream_id == "" else float("nan")


class STLEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditSTLEEncode",
            display_name="StreamEdit STLE Encode",
            category=CATEGORY,
            description="Video frames -> StreamEdit latents (4 frames -> 1 latent frame, 8x smaller).",
            inputs=[ModelType.Input("model"),
                    io.Image.Input("images", tooltip="Frames [T, H, W, C]; H and W multiples of 8.")] + _stream_inputs(),
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def fingerprint_inputs(cls, stream_id: str = "", **kwargs) -> float | str:
        return _stream_fingerprint(stream_id)

    @classmethod
    def execute(cls, model: LoadedModel, images: torch.Tensor, stream_id: str = "",
                chunk_index: int = 0) -> io.NodeOutput:
        m = model.get()
        stream = open_stream(model, stream_id, chunk_index)
        cache = None if stream is None else stream.part("encoder", m.stle.new_cache)
        latent = encode_frames(m, images[..., :3], cache, progress=progress_bar())  # [1, C, t, h, w]
        return io.NodeOutput({"samples": latent, FRAMES_KEY: images.shape[0]})


class STLEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditSTLEDecode",
            display_name="StreamEdit STLE Decode",
            category=CATEGORY,
            description="StreamEdit latents -> video frames (1 latent frame -> 4 frames).",
            inputs=[ModelType.Input("model"), io.Latent.Input("latent")] + _stream_inputs(),
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def fingerprint_inputs(cls, stream_id: str = "", **kwargs) -> float | str:
        return _stream_fingerprint(stream_id)

    @classmethod
    def execute(cls, model: LoadedModel, latent: dict, stream_id: str = "",
                chunk_index: int = 0) -> io.NodeOutput:
        m = model.get()
        samples = check_model_latent(latent, m, "STLE Decode")
        stream = open_stream(model, stream_id, chunk_index)
        cache = None if stream is None else stream.part("decoder", m.stle.new_cache)
        images = decode_latents(m, samples, cache, progress=progress_bar())
        if stream is None and FRAMES_KEY in latent:  # whole clip: drop the tail padding
            images = images[:latent[FRAMES_KEY]]
        if images.shape[0] == 0:
            # A stream's first jobs only fill the sampler's buffer. Image nodes fail on an empty
            # batch (Preview Image indexes images[0]), so skip the nodes downstream, silently:
            # the job succeeds and the stream state has advanced.
            return io.NodeOutput(ExecutionBlocker(None))
        return io.NodeOutput(images)


class DiTSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditDiTSampler",
            display_name="StreamEdit DiT Sampler",
            category=CATEGORY,
            description="Edits source latents with the prompt: streaming flow-matching sampler over "
                        "an adaptive sliding window (one DiT forward per latent frame).",
            inputs=[
                ModelType.Input("model"),
                io.Latent.Input("source", tooltip="Source video latents from STLE Encode."),
                TextType.Input("text"),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Noise seed; latent frame i uses noise seeded by (seed, i)."),
                io.Int.Input("steps", default=6, min=1, max=64,
                             tooltip="Denoising levels (= latent frames in flight). 6 for the "
                                     "distilled model; output starts steps - 1 latent frames late."),
                *_stream_inputs(),
                io.Int.Input("window_min", default=1, min=0, max=16, optional=True,
                             tooltip="Clean history latent frames kept at least (after a scene cut "
                                     "or prompt change)."),
                io.Int.Input("window_max", default=4, min=0, max=16, optional=True,
                             tooltip="History latent frames kept at most on static content."),
                io.Boolean.Input("flush", default=False, optional=True,
                                 tooltip="Streams only: end the stream after this chunk, returning "
                                         "the frames still in flight."),
                io.Boolean.Input("strict", default=False, optional=True, tooltip=STRICT_TOOLTIP),
            ],
            outputs=[io.Latent.Output(display_name="latent"),
                     io.String.Output(display_name="read_as", tooltip=READ_AS_TOOLTIP)],
        )

    @classmethod
    def fingerprint_inputs(cls, stream_id: str = "", **kwargs) -> float | str:
        return _stream_fingerprint(stream_id)

    @classmethod
    def execute(cls, model: LoadedModel, source: dict, text: EditText, seed: int, steps: int,
                stream_id: str = "", chunk_index: int = 0, window_min: int = 1, window_max: int = 4,
                flush: bool = False, strict: bool = False) -> io.NodeOutput:
        m = model.get()
        samples = check_model_latent(source, m, "DiT Sampler")
        settings = dict(seed=seed, steps=steps, window_min=window_min, window_max=window_max)
        reading = read_as(m, text.encoder, text.schedule.prompts, strict)
        stream = open_stream(model, stream_id, chunk_index)

        def new_editor() -> StreamEditor:
            return StreamEditor(m, text.encoder, text.schedule, attention=model.attention, **settings)

        if stream is None:  # a whole clip: edited from its start, flushed at its end
            editor, flush = new_editor(), True
        else:
            editor = stream.part("editor", new_editor)  # made at chunk 0
            check_editor_settings(editor, stream_id, **settings)
            editor.set_schedule(text.schedule)
        result = {"samples": sample_latents(editor, samples, flush=flush, progress=progress_bar())}
        if stream is None and FRAMES_KEY in source:
            result[FRAMES_KEY] = source[FRAMES_KEY]
        return io.NodeOutput(result, reading)


class ResetStream(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditResetStream",
            display_name="StreamEdit Reset Stream",
            category=CATEGORY,
            description="Drops a stream's state; its next job must start again at chunk_index 0.",
            inputs=[io.String.Input("stream_id", default="stream", tooltip="The stream to drop.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, stream_id: str) -> float:
        return float("nan")  # resetting is an action: run it on every queued job

    @classmethod
    def execute(cls, stream_id: str) -> io.NodeOutput:
        dropped = REGISTRY.drop(stream_id)
        return io.NodeOutput(ui={"text": [f"stream {stream_id!r} " + ("reset" if dropped else
                                                                       "had no state")]})
