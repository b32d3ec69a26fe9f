"""ComfyUI entry point of StreamEdit: registers the nodes in nodes/, nothing else.

Importing this package outside ComfyUI (tests, tools) is harmless: without `comfy_api` there
is nothing to register. The library itself is `streamedit_core`, which never imports ComfyUI.
"""
import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401
