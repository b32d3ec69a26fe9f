"""`python -m streamedit_core live`: serve the live page and edit camera streams.

    python -m streamedit_core live                      # the shipped demo model, http://127.0.0.1:8189/
    python -m streamedit_core live --checkpoint m.safetensors --size 256 --source clip.mp4 --record out.mp4

Serves on loopback unless --host names another address and --allow-remote is given (the page
has no authentication; a browser only grants a camera to a page on localhost or HTTPS).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from .rtc import is_loopback
from .session import STEPS_MAX, LiveSettings, check_live_prompt

log = logging.getLogger(__name__)

DEFAULT_PORT = 8189
DEFAULT_PROMPT = "make it a pencil sketch"
# frame size by preset when --size is not given: what each runs at a useful rate
DEFAULT_SIZE = {"tiny": 64, "demo": 128, "2b": 512, "10b": 512}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streamedit_core live",
                                description="Edit a camera stream live in the browser (WebRTC).")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a StreamEdit .safetensors checkpoint (default: the shipped demo model)")
    model.add_argument("--preset", help="random weights of a preset (speed work)")
    p.add_argument("--size", type=int, default=None,
                   help="frame height = width in pixels, a multiple of 8; camera frames are centre-cropped "
                        "and resized to it (default: 128 for the demo model, 512 for 2b)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the first prompt (default {DEFAULT_PROMPT!r})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"denoising levels in flight, 1..{STEPS_MAX} (default: the model's, 6); fewer "
                        "steps shorten the pipeline delay of (steps - 1) x 4 frames")
    p.add_argument("--transition", type=int, default=8, help="default blend of a prompt change, in frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-latency", type=float, default=1.0,
                   help="camera frames older than this (seconds) when the editor is ready are dropped")
    p.add_argument("--idle-timeout", type=float, default=10.0,
                   help="end a session when nothing came from its browser for this long (seconds)")
    p.add_argument("--max-sessions", type=int, default=1, help="concurrent sessions; more are refused")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="needed to serve on an address other than loopback: anyone who reaches it can use "
                        "the editor, and browsers grant cameras only to https or localhost pages")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--source", help="a video file as the camera for every session (looped at its frame rate)")
    p.add_argument("--record", help="write each session's edited output to this .mp4 (then NAME-2.mp4, ...)")
    p.add_argument("--text-ensemble", default=None,
                   help="folder with an ensemble.json (default: built-in MiniLM); 'random': fixed random token "
                        "states per prompt, for speed work with presets whose encoders are not here (2b, 10b)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def check_host(host: str, allow_remote: bool) -> list[str] | None:
    """The ICE addresses to pin for `host` (None: every interface). ValueError for a
    non-loopback host without allow_remote."""
    if is_loopback(host):
        return ["127.0.0.1"] if host != "::1" else ["::1"]
    if not allow_remote:
        raise ValueError(f"--host {host} serves beyond this machine; add --allow-remote to do that on purpose "
                         "(there is no authentication)")
    return None


async def serve(manager, host: str, port: int, on_ready=None) -> None:
    from aiohttp import web

    from .server import make_app

    runner = web.AppRunner(make_app(manager), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []
    bound = sockets[0].getsockname()[1] if sockets else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(bound)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from ..io.checkpoint import checkpoint_or_shipped, load_model
    from ..model.text import RandomText, TextEnsemble
    from ..types import resolve_device
    from .server import SessionManager

    ice = check_host(args.host, args.allow_remote)
    prompt = check_live_prompt(args.prompt)
    for name in ("source",):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"--{name} {path!r} is not a file")
    if args.record is not None:
        record = Path(args.record)
        if not record.parent.is_dir():
            raise ValueError(f"--record {args.record!r}: the folder {str(record.parent)!r} does not exist")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    logging.getLogger("streamedit_core").setLevel(logging.INFO)
    device = resolve_device(args.device)
    checkpoint = checkpoint_or_shipped(args.checkpoint, args.preset)
    model = load_model(checkpoint, preset=args.preset, seed=args.seed, device=device)
    text = RandomText(model.config.dit.text_members) if args.text_ensemble == "random" else \
        TextEnsemble.for_model(model.config, args.text_ensemble)
    size = args.size or DEFAULT_SIZE.get(model.config.name, 256)
    settings = LiveSettings(size=size, steps=args.steps, seed=args.seed, max_latency_s=args.max_latency,
                            transition_frames=args.transition, idle_timeout_s=args.idle_timeout)
    manager = SessionManager(max_sessions=args.max_sessions, source=args.source, record=args.record,
                             ice_addresses=ice)
    name = Path(checkpoint).name if checkpoint else f"random {args.preset}"
    manager.configure(model, text, prompt, settings, name=name)
    if ice is None:
        print(f"warning: serving on {args.host}, beyond this machine, without authentication; "
              "browsers grant the camera only to https or localhost pages (use --source there)",
              file=sys.stderr, flush=True)

    def ready(port: int) -> None:
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"StreamEdit Live: http://{shown}:{port}/  ({size} x {size}, {name} on {device}; "
              f"Ctrl-C to stop)", flush=True)

    asyncio.run(serve(manager, args.host, args.port, ready))
    return 0
