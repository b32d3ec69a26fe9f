"""WebRTC for live sessions (aiortc): one peer connection per session.

The browser offers its camera track (sendrecv) and a data channel; the server answers with the
edited track on the same transceiver. With a server-side source (`--source clip.mp4`) the
browser offers two receive-only video transceivers: the first gets the edited track, the second
the source. Nothing here knows about HTTP: `server.py` hands offers in and answers out.

ICE stays on the addresses the HTTP server is reachable on: bound to loopback, a session
gathers only 127.0.0.1 and ignores the browser's other candidates (aioice has no setting for
this, so its host-address function is wrapped, for our sessions only, through a context
variable); no STUN or TURN server is ever contacted.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fractions
import ipaddress
import json
import logging
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np

from .frames import to_uint8
from .session import COMMAND_TIMEOUT_S, LiveSession, SessionEnded, parse_command

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)

# --- ICE addresses ---------------------------------------------------------------------------
_ICE_ADDRESSES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "streamedit_ice_addresses", default=None)


def _install_ice_address_hook() -> None:
    """Wrap aioice's host-address lookup so that a session can pin its candidates' addresses
    (`_ICE_ADDRESSES`, set around its own gathering); everyone else gets aioice's answer."""
    import aioice.ice

    original = aioice.ice.get_host_addresses
    if getattr(original, "streamedit_hook", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        pinned = _ICE_ADDRESSES.get()
        return list(pinned) if pinned is not None else original(use_ipv4, use_ipv6)

    get_host_addresses.streamedit_hook = True
    aioice.ice.get_host_addresses = get_host_addresses


@contextlib.contextmanager
def pinned_ice_addresses(addresses: list[str] | None):
    """Within the block (in this task), aiortc peers gather host candidates on `addresses` only
    (None: every interface, aioice's default). Gathering runs in setLocalDescription."""
    _install_ice_address_hook()
    token = _ICE_ADDRESSES.set(None if addresses is None else list(addresses))
    try:
        yield
    finally:
        _ICE_ADDRESSES.reset(token)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def filter_candidates(sdp: str, keep: Callable[[str], bool]) -> str:
    """The SDP without the `a=candidate` lines whose address `keep` rejects (mDNS names too)."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 5 or not keep(parts[4]):
                continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


# --- tracks ----------------------------------------------------------------------------------
def _media():
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
    return MediaStreamTrack, MediaStreamError


def make_video_frame(rgb: np.ndarray, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
    return frame


class _Ticker:
    """Paces recv() at a fixed rate: waits for the next tick, returns its 90 kHz timestamp."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self.start: float | None = None
        self.count = 0

    async def tick(self) -> int:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        else:
            self.count += 1
            due = self.start + self.count * self.period
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 1.0:  # the loop was stalled: restart the clock, do not burst
                self.start, self.count = now, 0
        return int((time.monotonic() - self.start) * 90000)


def edited_track(session: LiveSession, recorder: "Recorder | None" = None):
    """The track the viewer receives: the paced edited frames of `session` at
    settings.output_fps, the last one repeated between edited frames; a dark frame during the
    warm-up."""
    MediaStreamTrack, MediaStreamError = _media()

    class EditedTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.ticker = _Ticker(session.settings.output_fps)

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            pts = await self.ticker.tick()
            paced = session.next_output()
            size = session.settings.size
            if paced is None or paced.frame.shape[0] != size:
                rgb = np.full((size, size, 3), 16, np.uint8)
            else:
                rgb = paced.frame
            if recorder is not None:
                await recorder.write(rgb)
            return make_video_frame(rgb, pts)

    return EditedTrack()


def file_track(path: str | Path, loop: bool = True):
    """A video file as a camera: its frames at its own frame rate, looped; decoded off the
    event loop, a few frames ahead."""
    from ..io.video import VideoReader

    MediaStreamTrack, MediaStreamError = _media()

    class FileCamera(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.path = Path(path)
            reader = VideoReader(self.path, chunk_frames=8)  # checks the file now
            self.fps = float(reader.fps) if reader.fps else 25.0
            self.ticker = _Ticker(self.fps)
            self._reader = reader
            self._chunks = None
            self._buffer: list[np.ndarray] = []

        def _read(self) -> list[np.ndarray]:
            for _ in range(2):
                if self._chunks is None:
                    self._chunks = iter(self._reader)
                chunk = next(self._chunks, None)
                if chunk is not None:
                    return list(to_uint8(chunk))
                if not loop:
                    return []
                self._chunks = None  # each iteration of a VideoReader opens the file anew
            return []

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            if not self._buffer:
                self._buffer = await asyncio.to_thread(self._read)
                if not self._buffer:
                    self.stop()
                    raise MediaStreamError
            pts = await self.ticker.tick()
            return make_video_frame(self._buffer.pop(0), pts)

    return FileCamera()


class Recorder:
    """The edited output of a session as an mp4 (VideoWriter: written atomically on close)."""

    def __init__(self, path: Path, fps: float, size: int) -> None:
        from ..io.video import VideoWriter
        self.path = Path(path)
        self.writer = VideoWriter(self.path, round(fps), size, size)
        self.writer.__enter__()
        self.size = size

    async def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[0] == self.size and self.writer is not None:
            await asyncio.to_thread(self.writer.write, rgb)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.__exit__(None, None, None)
            except ValueError as e:  # nothing written
                log.warning("recording not saved: %s", e)


# --- one peer connection -----------------------------------------------------------------
class PeerSession:
    """A `LiveSession` behind one RTCPeerConnection. `answer(offer)` sets it up; `close(reason)`
    (idempotent) tears everything down: the worker, the tracks, the connection. It closes
    itself when the connection fails or closes, the data channel closes, the camera track
    ends, or the worker stops (idle timeout, model unloaded, error)."""

    def __init__(self, session_id: str, session: LiveSession, *, source: str | Path | None = None,
                 ice_addresses: list[str] | None = None, recorder: Recorder | None = None,
                 on_closed: Callable[["PeerSession"], None] | None = None) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.id = session_id
        self.session = session
        self.source = source
        self.ice_addresses = ice_addresses
        self.recorder = recorder
        self.on_closed = on_closed
        self.loop = asyncio.get_running_loop()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN/TURN: nothing leaves the host
        self.channel = None
        self.tracks: list = []
        self.tasks: set[asyncio.Task] = set()
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._closing = False
        session.on_end = self._worker_ended

    async def answer(self, sdp: str, kind: str) -> dict:
        from aiortc import RTCSessionDescription

        with pinned_ice_addresses(self.ice_addresses):
            if self.ice_addresses is not None:
                allowed = set(self.ice_addresses)
                sdp = filter_candidates(sdp, lambda a: a in allowed or is_loopback(a))
            offer = RTCSessionDescription(sdp=sdp, type=kind)
            pc = self.pc
            pc.on("datachannel", self._on_datachannel)
            pc.on("track", self._on_track)
            pc.on("connectionstatechange", self._on_state)
            await pc.setRemoteDescription(offer)
            videos = [t for t in pc.getTransceivers() if t.kind == "video"]
            if not videos:
                raise ValueError("the offer has no video transceiver")
            edited = edited_track(self.session, self.recorder)
            self.tracks.append(edited)
            pc.addTrack(edited)
            if self.source is not None:
                if len(videos) < 2:
                    raise ValueError("this server's camera is a video file: offer two receive-only "
                                     "video transceivers (edited, source)")
                camera = file_track(self.source)
                self.tracks.append(camera)
                relay = _relay()
                pc.addTrack(relay.subscribe(camera))
                self._spawn(self._read_camera(relay.subscribe(camera), heard=False))
            self.session.start()
            await pc.setLocalDescription(await pc.createAnswer())
            return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    # -- events --
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_track(self, track) -> None:
        if track.kind == "video" and self.source is None:
            self._spawn(self._read_camera(track, heard=True))

    async def _read_camera(self, track, heard: bool) -> None:
        _, MediaStreamError = _media()
        try:
            while True:
                frame = await track.recv()
                self.session.put_frame(frame, heard=heard)
        except MediaStreamError:
            await self.close("the camera track ended")
        except asyncio.CancelledError:
            pass

    def _on_datachannel(self, channel) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message) -> None:
            self.session.heard()
            self._spawn(self._handle_message(message))

        @channel.on("close")
        def on_close() -> None:
            self._spawn(self.close("the data channel closed"))

        self._spawn(self._send_stats())

    async def _handle_message(self, message) -> None:
        msg_id = None
        try:
            msg = json.loads(message) if isinstance(message, str) else None
            msg_id = msg.get("id") if isinstance(msg, dict) else None
            cmd = parse_command(msg)
            if cmd.get("ping"):
                return
            reply = await self.run_command(cmd)
            self.send({"type": "reply", "id": msg_id, **reply})
        except (ValueError, TypeError, SessionEnded) as e:
            self.send({"type": "error", "id": msg_id, "message": str(e)})

    async def run_command(self, cmd: dict, timeout: float = COMMAND_TIMEOUT_S) -> dict:
        if cmd.get("stop"):
            self._spawn(self.close("stopped by the viewer"))
            return {"stop": True}
        future = self.session.command(cmd)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def send(self, obj: dict) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(obj))

    async def _send_stats(self) -> None:
        try:
            while not self.closed.is_set():
                await asyncio.sleep(0.5)
                self.send({"type": "stats", "session": self.id, **self.session.snapshot()})
        except asyncio.CancelledError:
            pass

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            await self.close(f"connection {state}")

    def _worker_ended(self, reason: str) -> None:
        """From the worker thread: the session stopped (idle, model unloaded, error)."""
        try:
            asyncio.run_coroutine_threadsafe(self.close(reason), self.loop)
        except RuntimeError:  # the loop is gone (server shut down)
            pass

    async def close(self, reason: str) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = self.session.end_reason if self.session.ended.is_set() else reason
        log.info("live session %s ends: %s", self.id, self.close_reason)
        self.session.stop(reason)
        self.send({"type": "ended", "reason": self.close_reason})
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        for track in self.tracks:
            track.stop()
        try:
            await self.pc.close()
        except Exception:  # a half-negotiated connection may fail to close; nothing to keep
            log.debug("closing the peer connection failed", exc_info=True)
        await asyncio.to_thread(self.session.join, 30.0)
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        self.channel = None
        self.closed.set()
        if self.on_closed is not None:
            self.on_closed(self)
        await asyncio.to_thread(release_memory)


def release_memory() -> None:
    """Give the heap's free pages back to the system after a session (glibc's malloc_trim; a
    no-op elsewhere): the session's buffers were allocated in its own threads' arenas, which
    glibc otherwise keeps, so the process's memory would not show that they were freed."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _relay():
    from aiortc.contrib.media import MediaRelay
    return MediaRelay()
