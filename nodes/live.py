"""StreamEdit Live Session: the live page on ComfyUI's own server (/streamedit/live/).

The session code is the core's (`streamedit_core.live`): this node only says what sessions run.
Queue it once (Loader -> Text Ensemble Loader -> Live Session), open the page, allow the camera;
queue it again with other settings and the running session follows; "Free memory" (or ComfyUI
unloading the model) ends it.
"""
from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from ..streamedit_core.live.server import SessionManager
from ..streamedit_core.live.session import (PROMPT_MAX_CHARS, SIZE_MAX, SIZE_MIN, STEPS_MAX, TRANSITION_MAX,
                                            LiveSettings)
from .common import CATEGORY, LoadedModel, ModelType, TextEncoderType, log, read_as

PAGE = "/streamedit/live"
MANAGER = SessionManager(max_sessions=1)  # the process's live sessions (routes mounted by `mount`)
FREED = "ComfyUI freed its models (Free memory); queue the Live Session node again"


def mount(server) -> None:
    """Add the live routes to ComfyUI's server (before it starts; `comfy_entrypoint` calls this).
    ICE stays on loopback when ComfyUI listens only there."""
    from ..streamedit_core.live.rtc import is_loopback
    from comfy.cli_args import args

    hosts = [h.strip() for h in str(getattr(args, "listen", "127.0.0.1") or "127.0.0.1").split(",") if h.strip()]
    MANAGER.ice_addresses = ["127.0.0.1"] if hosts and all(is_loopback(h) for h in hosts) else None
    MANAGER.unconfigured_reason = ("no live session is set up: queue a workflow with the StreamEdit Live "
                                   "Session node (workflows/live_camera.json)")
    for route in MANAGER.routes(PAGE):
        server.routes.route(route.method, route.path)(route.handler)


def _still_loaded(patcher):
    def guard() -> str | None:
        if any(getattr(m, "model", None) is patcher for m in mm.current_loaded_models):
            return None
        return "ComfyUI unloaded the model (Free memory, or another model needed the room)"
    return guard


class LiveSession(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditLiveSession",
            display_name="StreamEdit Live Session",
            category=CATEGORY,
            description=f"Edits a camera live: open {PAGE}/ on this ComfyUI (the camera in, the edited "
                        "stream out, over WebRTC). Queue again to change the settings of the running session.",
            inputs=[
                ModelType.Input("model"),
                TextEncoderType.Input("text_encoder"),
                io.String.Input("prompt", default="make it a pencil sketch",
                                tooltip=f"The first prompt (the page changes it live); at most {PROMPT_MAX_CHARS} "
                                        "characters."),
                io.Int.Input("size", default=128, min=SIZE_MIN, max=SIZE_MAX, step=8,
                             tooltip="Frame height = width in pixels; camera frames are centre-cropped and "
                                     "resized to it."),
                io.Int.Input("steps", default=6, min=1, max=STEPS_MAX,
                             tooltip="Denoising levels in flight. Output lags (steps - 1) x 4 frames: fewer "
                                     "steps, less delay."),
                io.Int.Input("window_min", default=1, min=0, max=16, optional=True,
                             tooltip="Clean history latent frames kept at least."),
                io.Int.Input("window_max", default=4, min=0, max=16, optional=True,
                             tooltip="History latent frames kept at most on static content."),
                io.Int.Input("transition_frames", default=8, min=0, max=TRANSITION_MAX, optional=True,
                             tooltip="Video frames over which a new prompt is blended in."),
                io.Int.Input("max_sessions", default=1, min=1, max=8, optional=True,
                             tooltip="Browser tabs editing at once; more are refused."),
                io.Float.Input("max_latency", default=1.0, min=0.1, max=10.0, step=0.1, optional=True,
                               tooltip="Camera frames older than this (seconds) when the editor is ready "
                                       "are dropped, never queued."),
            ],
            outputs=[io.String.Output(display_name="page", tooltip="The live page's path on this server.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return float("nan")  # (re)configures the running server: run on every queued job

    @classmethod
    def execute(cls, model: LoadedModel, text_encoder, prompt: str, size: int, steps: int,
                window_min: int = 1, window_max: int = 4, transition_frames: int = 8,
                max_sessions: int = 1, max_latency: float = 1.0) -> io.NodeOutput:
        m = model.get()
        settings = LiveSettings(size=size, steps=steps, window_min=window_min, window_max=window_max,
                                transition_frames=transition_frames, max_latency_s=float(max_latency))
        MANAGER.max_sessions = max_sessions
        MANAGER.configure(m, text_encoder, prompt, settings, name=model.name, guard=_still_loaded(model.patcher))
        reading = read_as(m, MANAGER.engine.text_encoder, [prompt.strip()])
        text = f"open {PAGE}/ on this server ({size} x {size}, {steps} steps).\n{reading}"
        log.info("StreamEdit Live: %s", text)
        return io.NodeOutput(f"{PAGE}/", ui={"text": [text]})
