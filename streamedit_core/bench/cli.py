"""`python -m streamedit_core bench {attention,stream,all,comfyui,soak,live} ...`: which benchmark runs.

`comfyui` (the node graph in a real ComfyUI against the core: `comfyui_bench`), `soak` (many
jobs, many streams and faults in a real ComfyUI: `soak`) and `live` (a live session in a real
browser, glass to glass: `live_bench`) have options of their own; everything
else is `speed`'s. Each is imported only when asked for.
"""
from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["comfyui"]:
        from .comfyui_bench import main as main_comfyui
        return main_comfyui(argv[1:])
    if argv[:1] == ["soak"]:
        from .soak import main as main_soak
        return main_soak(argv[1:])
    if argv[:1] == ["live"]:
        from .live_bench import main as main_live
        return main_live(argv[1:])
    from .speed import main as main_speed
    return main_speed(argv)
