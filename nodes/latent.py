"""Latent nodes: STLE Encode, StreamEdit DiT Sampler, STLE Decode, Reset Stream.

With an empty `stream_id` the three nodes edit a whole clip within one job. With a `stream_id`
they continue that stream chunk by chunk across queued jobs (see streaming.py), one latent frame
(4 video frames) at a time with the same calls as `StreamEditor.feed`, so the frames equal the
core editor's whatever the chunking.
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..streamedit_core.stream.editor import StreamEditor, check_frame_size, pad_tail, to_frames
from .common import (CATEGORY, CHUNK_INDEX_TOOLTIP, STREAM_ID_TOOLTIP, LoadedModel, ModelType,
                     PromptSchedule, TextType, check_model_latent)
from .streaming import STREAMS, StreamEntry, check_editor_settings, current_job, part

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


def _open(model: LoadedModel, stream_id: str, chunk_index: int) -> StreamEntry | None:
    return STREAMS.open(stream_id, chunk_index, model.patcher, current_job()) if stream_id else None


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
        frames = to_frames(images[..., :3]).to(m.device)  # [T, H, W, 3]
        n = frames.shape[0]
        if n == 0:
            raise ValueError("STLE Encode got no frames")
        check_frame_size(m.config, frames.shape[1], frames.shape[2])
        stride = m.config.temporal_stride
        entry = _open(model, stream_id, chunk_index)
        if entry is None:
            cache = m.stle.new_cache()
            frames = pad_tail(frames, stride)  # whole clip: the tail padded as flush pads it
        else:
            if n % stride:
                raise ValueError(f"stream {stream_id!r}: a chunk must hold a multiple of {stride} "
                                 f"frames, got {n}")
            cache = part(entry, "encoder", m.stle.new_cache)
        out = []
        bar = comfy.utils.ProgressBar(frames.shape[0] // stride)
        with torch.inference_mode():
            for i in range(0, frames.shape[0], stride):
                mm.throw_exception_if_processing_interrupted()
                x = frames[i:i + stride].permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, 4, H, W]
                out.append(m.stle.encode(x, cache, check_finite=False))  # [1, C, 1, h, w]
                bar.update(1)
        latent = torch.cat(out, dim=2).float().cpu()  # [1, C, t, h, w]
        return io.NodeOutput({"samples": latent, FRAMES_KEY: n})


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
        if samples.shape[0] != 1:
            raise ValueError(f"STLE Decode takes one video (batch 1), got a batch of {samples.shape[0]}")
        entry = _open(model, stream_id, chunk_index)
        cache = m.stle.new_cache() if entry is None else part(entry, "decoder", m.stle.new_cache)
        stride, space = m.config.temporal_stride, m.config.stle.spatial_stride
        h, w = samples.shape[-2] * space, samples.shape[-1] * space
        out = [torch.zeros(0, h, w, 3)]
        bar = comfy.utils.ProgressBar(max(samples.shape[2], 1))
        with torch.inference_mode():
            for i in range(samples.shape[2]):
                mm.throw_exception_if_processing_interrupted()
                # contiguous like StreamEditor's own latents: the same layout gives the same floats
                z = samples[:, :, i:i + 1].to(m.device, m.dtype).contiguous()  # [1, C, 1, h, w]
                frames = m.stle.decode(z, cache, check_finite=False)  # [1, 3, 4, H, W]
                out.append(frames[0].permute(1, 2, 3, 0).float().cpu())  # [4, H, W, 3]
                bar.update(1)
        images = torch.cat(out)
        if entry is None and FRAMES_KEY in latent:  # whole clip: drop the tail padding
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
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def fingerprint_inputs(cls, stream_id: str = "", **kwargs) -> float | str:
        return _stream_fingerprint(stream_id)

    @classmethod
    def execute(cls, model: LoadedModel, source: dict, text: PromptSchedule, seed: int, steps: int,
                stream_id: str = "", chunk_index: int = 0, window_min: int = 1, window_max: int = 4,
                flush: bool = False) -> io.NodeOutput:
        m = model.get()
        samples = check_model_latent(source, m, "DiT Sampler")
        if samples.shape[0] != 1:
            raise ValueError(f"DiT Sampler takes one video (batch 1), got a batch of {samples.shape[0]}")
        settings = dict(seed=seed, steps=steps, window_min=window_min, window_max=window_max)

        def new_editor() -> StreamEditor:
            return StreamEditor(m, text.encoder, text.first, attention=model.attention, **settings)

        entry = _open(model, stream_id, chunk_index)
        if entry is None:
            editor, flush = new_editor(), True
        else:
            editor = part(entry, "editor", new_editor)
            check_editor_settings(editor, stream_id, **settings)
        stride = m.config.temporal_stride
        latents = samples.to(m.device)
        n = latents.shape[2]
        bar = comfy.utils.ProgressBar(n + (steps - 1 if flush else 0))
        out = []
        with torch.inference_mode():
            for i in range(n):
                mm.throw_exception_if_processing_interrupted()
                index = editor.stream_state.next_index  # absolute latent frame index in the stream
                cls._switch_prompts(editor, text, index * stride, stride)
                src = latents[0, :, i].contiguous()  # [C, h, w], laid out as StreamEditor's
                out.append(editor.step_latent(src))
                bar.update(1)
            while flush and editor.stream_state.n_inflight:
                mm.throw_exception_if_processing_interrupted()
                out.append(editor.drain_latent())
                bar.update(1)
        ready = [o[:, None] for o in out if o is not None]  # [C, 1, h, w] each
        edited = torch.cat(ready, dim=1)[None] if ready else samples[:, :, :0]
        result = {"samples": edited.float().cpu()}
        if entry is None and "streamedit_frames" in source:
            result["streamedit_frames"] = source["streamedit_frames"]
        return io.NodeOutput(result)

    @staticmethod
    def _switch_prompts(editor: StreamEditor, text: PromptSchedule, frame: int, stride: int) -> None:
        """Apply the schedule entries that start within the video frames of this latent frame."""
        if len(text.entries) == 1:
            if text.first != editor.prompt:  # the prompt was edited between chunk jobs
                editor.set_prompt(text.first, 0)
            return
        for _, prompt in text.switches_in(frame, frame + stride):
            editor.set_prompt(prompt, text.transition_frames)


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
        dropped = STREAMS.drop(stream_id)
        return io.NodeOutput(ui={"text": [f"stream {stream_id!r} " + ("reset" if dropped else
                                                                       "had no state")]})
