"""Shared by the live tests (tests/live/, tests/comfyui/test_live_comfyui.py): the live server
as a real process (the CLI), a WebRTC client built on aiortc (a second real peer, for tests that
need no browser), and the fake camera's frame code."""
from __future__ import annotations

import asyncio
import fractions
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIVE_SIZE = 64  # the browser tests' session size: the demo model at a few frames per second under load


class LiveServerProcess:
    """`python -m streamedit_core live --port 0 ARGS...` in a subprocess; `url` once it listens."""

    def __init__(self, *args: str, log_path: Path | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> "LiveServerProcess":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "streamedit_core", "live", "--port", "0", *self.args],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the live server exited with {self.proc.returncode}: {lines}\n{self.log()}")
                continue
            lines.append(line)
            m = re.search(r"(http://\S+/)", line)
            if m:
                self.url = m.group(1)
                return self
        self.stop()
        raise TimeoutError(f"the live server printed no URL within {timeout} s: {lines}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path and self.log_path.exists() else ""

    def request(self, method: str, path: str, body=None, content_type: str = "application/json",
                raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, _json(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())

    def info(self) -> dict:
        return self.request("GET", "api/info")[1]

    def wait_sessions(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.info()["sessions"] == n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the server still has {self.info()['sessions']} sessions, not {n}, after {timeout} s")

    def resources(self) -> dict:
        import psutil
        p = psutil.Process(self.proc.pid)
        return {"rss_mb": p.memory_info().rss / 2**20, "threads": p.num_threads(), "fds": p.num_fds()}


def _json(raw: bytes):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"text": raw.decode(errors="replace")}


# --- an aiortc client ----------------------------------------------------------------------
def synthetic_camera(width: int = 160, height: int = 120, fps: float = 30.0):
    """A camera track of moving colour bars."""
    import av
    from aiortc.mediastreams import MediaStreamTrack

    class Camera(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.i = 0
            self.t0 = None

        async def recv(self):
            if self.t0 is None:
                self.t0 = time.monotonic()
            due = self.t0 + self.i / fps
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            x = (np.arange(width)[None, :] + 3 * self.i) % width
            rgb = np.stack([x * 255 // width, np.full_like(x, 90), 255 - x * 255 // width], -1)
            rgb = np.broadcast_to(rgb, (height, width, 3)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = int(self.i * 90000 / fps), fractions.Fraction(1, 90000)
            self.i += 1
            return frame

    return Camera()


class RtcClient:
    """One browser-like peer: sends a synthetic camera and a data channel, counts edited frames."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pc = None
        self.session = None
        self.received = 0
        self.sizes: set[tuple[int, int]] = set()
        self.messages: list[dict] = []
        self._tasks: list[asyncio.Task] = []

    async def offer(self, prompt: str | None = None) -> tuple[int, dict]:
        """Connect; (status, body) of POST api/offer (200: connected)."""
        import aiohttp
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from streamedit_core.live.rtc import pinned_ice_addresses

        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("control")
        channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.channel = channel
        pc.addTransceiver(synthetic_camera(), direction="sendrecv")
        pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._count(track))))
        with pinned_ice_addresses(["127.0.0.1"]):  # loopback only, like the server
            await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        if prompt:
            body["prompt"] = prompt
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "api/offer", json=body) as r:
                answer = await r.json()
                if r.status != 200:
                    await pc.close()
                    return r.status, answer
        self.session = answer["session"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self._tasks.append(asyncio.ensure_future(self._ping()))
        return 200, answer

    async def _count(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.received += 1
                self.sizes.add((frame.width, frame.height))
        except Exception:
            pass

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.channel.readyState == "open":
                self.channel.send(json.dumps({"type": "ping"}))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.pc is not None:
            await self.pc.close()


async def _main(url: str, seconds: float) -> None:
    client = RtcClient(url)
    status, body = await client.offer()
    print(json.dumps({"status": status, **body}), flush=True)
    await asyncio.sleep(seconds)
    await client.close()


if __name__ == "__main__":  # a client process to kill: python live_helpers.py URL SECONDS
    sys.path.insert(0, str(REPO))
    asyncio.run(_main(sys.argv[1], float(sys.argv[2])))
