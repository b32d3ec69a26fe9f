"""ComfyUI nodes of StreamEdit (V3 `comfy_api` nodes); imported only inside ComfyUI."""
from __future__ import annotations

import logging
import os
import shutil

from comfy_api.latest import ComfyExtension, io

from ..streamedit_core.io.files import remove_temp_files_on_signals
from ..streamedit_core.io.video import EXAMPLE_CLIP
from ..streamedit_core.stream.registry import REGISTRY
from .common import register_folders
from .latent import DiTSampler, ResetStream, STLEDecode, STLEEncode
from .live import FREED, MANAGER, LiveSession, mount
from .loaders import ModelLoader, PromptScheduleNode, TextEnsembleEncode, TextEnsembleLoader
from .video import CHUNK_READER, EditVideo, LoadVideoChunk

NODES: list[type[io.ComfyNode]] = [
    ModelLoader, TextEnsembleLoader, TextEnsembleEncode, PromptScheduleNode,
    STLEEncode, DiTSampler, STLEDecode, ResetStream, EditVideo, LoadVideoChunk, LiveSession,
]


def _finish_streams_with_jobs(prompt_queue) -> None:
    """Commit or roll back the streams a job touched as soon as ComfyUI's worker reports the job
    done (`PromptQueue.task_done`, called on the worker thread with the job's status), so that
    nothing read later (history, which "Clear History" empties) decides it."""
    original = prompt_queue.task_done
    if getattr(original, "streamedit_hook", False):
        return

    def task_done(item_id, history_result, status=None, *args, **kwargs):
        running = prompt_queue.currently_running.get(item_id)  # (number, prompt_id, ...)
        if running is not None:
            REGISTRY.finish(running[1], succeeded=status is not None and status.status_str == "success")
        CHUNK_READER.release_cleared()  # decoders closed by /free, on this (the worker's) thread
        return original(item_id, history_result, status, *args, **kwargs)

    task_done.streamedit_hook = True
    prompt_queue.task_done = task_done


def _drop_streams_on_free():
    """aiohttp middleware: POST /free (what the UI's "Unload models" / "Free memory" send) also
    drops every stream's state, closes Load Video Chunk's open decoders and ends the live
    sessions, like ComfyUI drops its caches. It runs on the server thread, so streams and decoders
    are only marked dropped here; the worker releases them (see `StreamRegistry.clear`; a stream a
    running job holds goes when it ends); live sessions stop between two frames."""
    from aiohttp import web

    @web.middleware
    async def middleware(request, handler):
        response = await handler(request)
        if request.method == "POST" and request.path in ("/free", "/api/free") and response.status == 200:
            body = await request.json()
            if body.get("unload_models") or body.get("free_memory"):
                REGISTRY.clear()
                CHUNK_READER.clear()
                MANAGER.unconfigure(FREED)
        return response

    return middleware


def _add_status_route(routes) -> None:
    """GET /streamedit/streams: the streams held and their bounds, the decoders open (the soak
    test and anyone debugging memory read it)."""
    from aiohttp import web

    @routes.get("/streamedit/streams")
    async def streams(request):
        return web.json_response({**REGISTRY.stats(), "open_decoders": len(CHUNK_READER)})


class StreamEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


def _place_example_clip() -> None:
    """Copy the clip the shipped workflows name into ComfyUI's input folder, once (never over a
    file of that name), so that every workflow runs as shipped."""
    import folder_paths

    target = os.path.join(folder_paths.get_input_directory(), EXAMPLE_CLIP.name)
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(EXAMPLE_CLIP, target)
        logging.getLogger("StreamEdit").info("StreamEdit: put the example clip the workflows use at %s", target)


async def comfy_entrypoint() -> StreamEditExtension:
    # Set-up happens here rather than in `on_load`, which ComfyUI v0.3.75 does not call.
    register_folders()
    _place_example_clip()
    from server import PromptServer

    app = PromptServer.instance.app
    if not app.frozen:  # middlewares and routes can only be added before the server starts
        app.middlewares.append(_drop_streams_on_free())
        _add_status_route(PromptServer.instance.routes)
        mount(PromptServer.instance)
    _finish_streams_with_jobs(PromptServer.instance.prompt_queue)
    # SIGTERM/SIGHUP kill ComfyUI at once (it sets no handler): remove Edit Video's temporary
    # output file first, then die by the signal as before.
    remove_temp_files_on_signals()
    return StreamEditExtension()
