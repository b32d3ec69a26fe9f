"""The live server: HTTP (aiohttp) for the page and the signalling, WebRTC (aiortc) for video.

    manager = SessionManager(max_sessions=1)
    manager.configure(model, text_encoder, "make it a pencil sketch", LiveSettings(size=128))
    app = web.Application(); app.add_routes(manager.routes(prefix=""))

`python -m streamedit_core live` serves it on its own (`live.cli`); the ComfyUI node mounts the
same routes on ComfyUI's server under /streamedit/live. Routes, under `prefix`:

    GET  /                      the page (static HTML + JS, no build step, no CDN)
    GET  /static/{live.js,live.css}
    GET  /api/info              model, size, steps, example prompts, limits
    POST /api/offer             {"sdp", "type": "offer", "prompt"?, "steps"?} -> the answer + session id
    GET  /api/sessions/{id}     the session's stats (?frames=1: every shown frame's timings)
    POST /api/sessions/{id}     a command: {"prompt", "transition"?} | {"reset": true} | {"steps": n} | {"stop": true}
    DELETE /api/sessions/{id}   end it (also POST /api/sessions/{id}/close, for navigator.sendBeacon)

Errors are JSON `{"error": message}` with 400 (bad input), 404 (no such session), 413 (body too
large), 415 (not JSON), 503 (at the session cap, or no model configured).
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from .rtc import PeerSession, Recorder
from .session import (PROMPT_MAX_CHARS, STEPS_MAX, TRANSITION_MAX, LiveSession, LiveSettings, LockedText,
                      SessionEnded, check_live_prompt, check_steps, parse_command)

log = logging.getLogger(__name__)

OFFER_MAX_BYTES = 64 * 1024  # an SDP offer is a few kB
COMMAND_MAX_BYTES = 4 * 1024
STATIC_FILES = {"live.js": "application/javascript", "live.css": "text/css"}
# Example prompts for the page for a model without a closed vocabulary (it reads any prompt).
OPEN_EXAMPLES = ("make it a pencil sketch", "make it a watercolor painting", "make it black and white",
                 "make it a sepia photograph", "give it a warm tint", "invert the colors")


class LiveError(Exception):
    """A refused request: HTTP status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Engine:
    """What new sessions run: the model, its (shared) text encoder, the first prompt, settings."""
    model: Any
    text_encoder: Any
    prompt: str
    settings: LiveSettings
    name: str = ""
    guard: Callable[[], str | None] | None = None  # a reason to end sessions, or None


def example_prompts(model) -> list[str]:
    """One prompt per edit for a model with a closed vocabulary (its first training wording of
    each), so every example is read as what it says."""
    vocab = getattr(model.config, "vocabulary", None)
    wordings = tuple(getattr(vocab, "wordings", ()) or ())
    return [w[0] for w in wordings if w] or list(OPEN_EXAMPLES)


def static_text(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


class SessionManager:
    """Live sessions of one server: the cap, what they run (`configure`), their routes.

    configure/unconfigure may be called from any thread (the ComfyUI node runs on ComfyUI's
    worker thread); everything else runs on the server's event loop.
    """

    def __init__(self, *, max_sessions: int = 1, source: str | Path | None = None,
                 record: str | Path | None = None, ice_addresses: list[str] | None = None) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(f"max_sessions must be an int >= 1, got {max_sessions!r}")
        self.max_sessions = max_sessions
        self.source = None if source is None else Path(source)
        self.record = None if record is None else Path(record)
        self.ice_addresses = ice_addresses
        self.sessions: dict[str, PeerSession] = {}
        self.engine: Engine | None = None
        self.unconfigured_reason = "no model is configured"
        self._pending = 0  # offers being answered (they hold a slot)
        self._recordings = 0
        self._lock = threading.Lock()

    # -- what sessions run (any thread) --
    def configure(self, model, text_encoder, prompt: str, settings: LiveSettings = LiveSettings(), *,
                  name: str = "", guard: Callable[[], str | None] | None = None) -> None:
        """Set what new sessions run; running sessions follow (a new prompt is switched to over
        the settings' transition, a new model or settings rebuild their editors)."""
        settings = settings.check(model.config)
        prompt = check_live_prompt(prompt)
        with self._lock:
            old = self.engine
            if isinstance(text_encoder, LockedText):
                text = text_encoder
            elif old is not None and old.text_encoder.encoder is text_encoder:
                text = old.text_encoder  # the same encoder keeps its lock
            else:
                text = LockedText(text_encoder)
            self.engine = Engine(model, text, prompt, settings, name, guard)
            sessions = list(self.sessions.values())
        for peer in sessions:
            peer.session.guard = guard
            peer.session.reconfigure(model, text, settings, prompt)

    def unconfigure(self, reason: str) -> int:
        """No model any more (ComfyUI freed it): end every session with `reason`; new offers are
        refused with it until `configure` is called again. Returns the sessions ended."""
        with self._lock:
            self.engine = None
            self.unconfigured_reason = reason
            sessions = list(self.sessions.values())
        for peer in sessions:
            peer.session.stop(reason)
        return len(sessions)

    # -- sessions (event loop) --
    async def offer(self, body: dict) -> dict:
        sdp, kind = body.get("sdp"), body.get("type")
        if not isinstance(sdp, str) or not sdp.strip():
            raise LiveError(400, "the offer needs an 'sdp' string (the browser's RTCSessionDescription)")
        if kind != "offer":
            raise LiveError(400, f"'type' must be 'offer', got {kind!r}")
        unknown = set(body) - {"sdp", "type", "prompt", "steps"}
        if unknown:
            raise LiveError(400, f"unknown fields in the offer: {sorted(unknown)}")
        try:
            prompt = None if body.get("prompt") in (None, "") else check_live_prompt(body["prompt"])
            check_steps(body.get("steps"))
        except (ValueError, TypeError) as e:
            raise LiveError(400, str(e)) from None
        if importlib.util.find_spec("aiortc") is None:
            raise LiveError(503, "live sessions need aiortc, which is not installed here: pip install aiortc")
        with self._lock:
            engine = self.engine
            if engine is None:
                raise LiveError(503, self.unconfigured_reason)
            busy = len(self.sessions) + self._pending
            if busy >= self.max_sessions:
                raise LiveError(503, f"this server runs at most {self.max_sessions} live session"
                                     f"{'s' if self.max_sessions > 1 else ''} at once and {busy} "
                                     f"{'is' if busy == 1 else 'are'} running; close one (its tab or "
                                     "its Stop button) or start the server with a higher --max-sessions")
            self._pending += 1
        peer = None
        try:
            settings = engine.settings
            if body.get("steps") is not None:
                settings = dataclasses.replace(settings, steps=body["steps"])
            session = LiveSession(engine.model, engine.text_encoder, prompt or engine.prompt, settings,
                                  guard=engine.guard)
            session_id = secrets.token_urlsafe(9)
            peer = PeerSession(session_id, session, source=self.source, ice_addresses=self.ice_addresses,
                               recorder=self._recorder(settings), on_closed=self._closed)
            try:
                answer = await asyncio.wait_for(peer.answer(sdp, kind), 30)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                raise
            except LiveError:
                raise
            except Exception as e:  # aiortc's SDP parser raises all kinds of errors on bad input
                raise LiveError(400, f"invalid SDP offer ({type(e).__name__}: {e})") from e
            with self._lock:
                self.sessions[session_id] = peer
            log.info("live session %s started (%d running)", session_id, len(self.sessions))
            return {**answer, "session": session_id, "size": settings.size, "prompt": session.prompt}
        except BaseException:
            if peer is not None:
                await peer.close("the offer failed")
            raise
        finally:
            with self._lock:
                self._pending -= 1

    def _recorder(self, settings: LiveSettings) -> Recorder | None:
        if self.record is None:
            return None
        self._recordings += 1
        path = self.record if self._recordings == 1 else \
            self.record.with_name(f"{self.record.stem}-{self._recordings}{self.record.suffix}")
        return Recorder(path, settings.output_fps, settings.size)

    def _closed(self, peer: PeerSession) -> None:
        with self._lock:
            self.sessions.pop(peer.id, None)

    def get(self, session_id: str) -> PeerSession:
        peer = self.sessions.get(session_id)
        if peer is None:
            raise LiveError(404, f"no live session {session_id!r} (it ended, or never existed)")
        return peer

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(p.close(reason) for p in list(self.sessions.values())))

    def info(self) -> dict:
        engine = self.engine
        out = {"configured": engine is not None, "max_sessions": self.max_sessions,
               "sessions": len(self.sessions), "source": self.source.name if self.source else None,
               "prompt_max_chars": PROMPT_MAX_CHARS, "transition_max": TRANSITION_MAX, "steps_max": STEPS_MAX}
        if engine is None:
            return {**out, "reason": self.unconfigured_reason}
        s = engine.settings
        return {**out, "model": engine.name, "size": s.size, "prompt": engine.prompt,
                "steps": s.steps or engine.model.config.sampler.steps,
                "transition_frames": s.transition_frames, "max_latency_s": s.max_latency_s,
                "examples": example_prompts(engine.model)}

    # -- HTTP --
    def routes(self, prefix: str = "") -> list[web.RouteDef]:
        p = prefix.rstrip("/")
        out = [
            web.get(p + "/", self._page),
            web.get(p + "/static/{name}", self._static),
            web.get(p + "/api/info", self._info),
            web.post(p + "/api/offer", self._offer),
            web.get(p + "/api/sessions/{id}", self._stats),
            web.post(p + "/api/sessions/{id}", self._command),
            web.delete(p + "/api/sessions/{id}", self._delete),
            web.post(p + "/api/sessions/{id}/close", self._delete),
        ]
        if p:
            out.append(web.get(p, self._to_page))
        return out

    async def _to_page(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path + "/" + (f"?{request.query_string}" if request.query_string else ""))

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=static_text("index.html"), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return _error(404, f"no static file {name!r}")
        return web.Response(text=static_text(name), content_type=STATIC_FILES[name],
                            headers={"Cache-Control": "no-store"})

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info())

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.offer(await read_json(request, OFFER_MAX_BYTES)))
        except LiveError as e:
            return _error(e.status, str(e))

    async def _stats(self, request: web.Request) -> web.Response:
        try:
            peer = self.get(request.match_info["id"])
        except LiveError as e:
            return _error(e.status, str(e))
        out = {"session": peer.id, **peer.session.snapshot()}
        if request.query.get("frames"):  # every shown frame's timings, on the server's clock
            out["frames"] = [dict(t.__dict__) for t in list(peer.session.stats.log)]
            out["clock"] = peer.session.clock()
        return web.json_response(out)

    async def _command(self, request: web.Request) -> web.Response:
        try:
            peer = self.get(request.match_info["id"])
            body = await read_json(request, COMMAND_MAX_BYTES)
            try:
                cmd = parse_command(body)
            except (ValueError, TypeError) as e:
                raise LiveError(400, str(e)) from None
            peer.session.heard()
            try:
                return web.json_response(await peer.run_command(cmd))
            except (ValueError, TypeError) as e:
                raise LiveError(400, str(e)) from None
            except SessionEnded as e:
                raise LiveError(404, str(e)) from None
        except LiveError as e:
            return _error(e.status, str(e))

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            peer = self.get(request.match_info["id"])
        except LiveError as e:
            return _error(e.status, str(e))
        await peer.close("closed by the viewer")
        return web.json_response({"closed": peer.id})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request, max_bytes: int) -> dict:
    """The request's JSON object; LiveError 415 (not JSON), 413 (too large), 400 (malformed)."""
    if request.content_type != "application/json":
        raise LiveError(415, f"expected Content-Type: application/json, got {request.content_type or 'none'!r}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise LiveError(413, f"the body is {request.content_length} bytes; at most {max_bytes} are accepted")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise LiveError(413, f"the body is over {max_bytes} bytes; at most {max_bytes} are accepted")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LiveError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise LiveError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def make_app(manager: SessionManager, prefix: str = "") -> web.Application:
    """A standalone aiohttp app serving `manager` (what `python -m streamedit_core live` runs)."""
    app = web.Application(client_max_size=OFFER_MAX_BYTES)
    app.add_routes(manager.routes(prefix))

    async def on_shutdown(app: web.Application) -> None:
        await manager.close_all("the server is shutting down")

    app.on_shutdown.append(on_shutdown)
    return app
