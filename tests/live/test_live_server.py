"""The live server as a real process (python -m streamedit_core live, the shipped demo model at
64 x 64) and real WebRTC peers (aiortc): errors, the session cap, commands, clean-up, a file
as the camera and the recording. The browser's view of the same server: test_live_browser.py."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from live_helpers import REPO, LiveServerProcess, RtcClient
from streamedit_core.bench.browser import wait_until

PROMPT = "make it black and white"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("live") / "server.log"
    s = LiveServerProcess("--size", "64", "--max-sessions", "1", "--idle-timeout", "3", "--prompt", PROMPT,
                          log_path=log).start()
    yield s
    s.stop()


def test_cli_refuses_a_remote_host_without_the_flag():
    out = subprocess.run([sys.executable, "-m", "streamedit_core", "live", "--host", "0.0.0.0"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "error: --host 0.0.0.0 serves beyond this machine; add --allow-remote" in out.stderr


def test_page_and_info(server):
    import urllib.request
    page = urllib.request.urlopen(server.url).read().decode()
    assert "<title>StreamEdit Live</title>" in page and "static/live.js" in page
    assert "RTCPeerConnection" in urllib.request.urlopen(server.url + "static/live.js").read().decode()
    info = server.info()
    assert info["configured"] and info["size"] == 64 and info["steps"] == 6 and info["prompt"] == PROMPT
    assert PROMPT in info["examples"] and len(info["examples"]) == 14  # the shipped model's 13 edits and "no edit"
    assert server.request("GET", "static/../../etc/passwd")[0] == 404


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
    cases = [
        (dict(raw=b"v=0", content_type="text/plain"), 415, "expected Content-Type: application/json, got 'text/plain'"),
        (dict(raw=b"{not json"), 400, "the body is not valid JSON"),
        (dict(body=[1, 2]), 400, "the body must be a JSON object, got list"),
        (dict(body={"sdp": "v=0\r\nthis is not an offer\r\n", "type": "offer"}), 400, "invalid SDP offer"),
        (dict(body={"sdp": "v=0", "type": "answer"}), 400, "'type' must be 'offer', got 'answer'"),
        (dict(body={"type": "offer"}), 400, "the offer needs an 'sdp' string"),
        (dict(body={"sdp": "v=0" + "x" * 70000, "type": "offer"}), 413, "at most 65536 are accepted"),
        (dict(body={"sdp": "v=0", "type": "offer", "prompt": "sepia " * 100}), 400,
         "prompt is 600 characters long; at most 300 are accepted"),
        (dict(body={"sdp": "v=0", "type": "offer", "steps": 40}), 400, "steps must be an int in [1, 12], got 40"),
    ]
    for kwargs, status, message in cases:
        got, body = server.request("POST", "api/offer", **kwargs)
        assert (got, message in body.get("error", "")) == (status, True), (kwargs, got, body)
    assert server.request("GET", "api/sessions/nope")[0] == 404
    assert server.request("POST", "api/sessions/nope", body={"reset": True}) == \
        (404, {"error": "no live session 'nope' (it ended, or never existed)"})
    assert server.info()["sessions"] == 0  # nothing half-made is left, and it still answers


def test_a_session_edits_takes_commands_refuses_beyond_the_cap_and_ends(server):
    async def scenario():
        a = RtcClient(server.url)
        status, answer = await a.offer()
        assert status == 200 and answer["size"] == 64 and answer["prompt"] == PROMPT
        sid = answer["session"]
        stats = lambda: server.request("GET", f"api/sessions/{sid}")[1]  # noqa: E731
        await asyncio.to_thread(wait_until, lambda: stats()["frames_edited"] >= 8, 60, what="edited frames")
        assert a.sizes == {(64, 64)}
        assert stats()["read_as"] == "grayscale" and stats()["steps"] == 6

        # the cap: a second peer is refused with the reason, the first keeps running
        b = RtcClient(server.url)
        status, body = await b.offer()
        assert status == 503
        assert body["error"].startswith("this server runs at most 1 live session at once and 1 is running")

        # commands over HTTP (the page sends the same over its data channel)
        post = lambda body: server.request("POST", f"api/sessions/{sid}", body=body)  # noqa: E731
        assert await asyncio.to_thread(post, {"prompt": "make it a sepia photograph", "transition": 0}) == \
            (200, {"prompt": "make it a sepia photograph", "read_as": "sepia", "warning": None, "transition": 0})
        # a prompt the model does not know still edits (as the nearest), with the warning the page shows
        status, body = await asyncio.to_thread(post, {"prompt": "turn the sky into a galaxy", "transition": 0})
        assert status == 200 and body["read_as"] is not None
        assert body["warning"].startswith("'turn the sky into a galaxy' is not an edit this model knows")
        assert stats()["warning"] == body["warning"]
        got = await asyncio.to_thread(post, {"prompt": "x" * 1000})
        assert got == (400, {"error": "prompt is 1000 characters long; at most 300 are accepted"})
        assert (await asyncio.to_thread(post, {"dance": 1}))[0] == 400
        assert await asyncio.to_thread(post, {"steps": 3}) == (200, {"steps": 3})
        assert await asyncio.to_thread(post, {"reset": True}) == (200, {"reset": True})
        before = stats()["frames_edited"]
        await asyncio.to_thread(wait_until, lambda: stats()["frames_edited"] > before, 30, what="frames after reset")
        assert stats()["steps"] == 3 and stats()["warmup_frames"] == 8
        assert any(m["type"] == "stats" for m in a.messages)  # pushed over the data channel

        # the first peer leaves: its session ends and frees its slot
        await a.close()
        await asyncio.to_thread(server.wait_sessions, 0, 15)
        c = RtcClient(server.url)
        status, _ = await c.offer()
        assert status == 200
        await c.close()
        await asyncio.to_thread(server.wait_sessions, 0, 15)

    asyncio.run(scenario())


def test_a_vanished_peer_ends_its_session(server):
    """A client killed without a goodbye (no DTLS close, no data channel close: what a lost
    network looks like) is ended by the idle timeout (3 s here)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "live_helpers.py"), server.url, "60"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["status"] == 200
        server.wait_sessions(1, 10)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        server.wait_sessions(0, 15)
        assert time.monotonic() - t0 < 3 + 5
    finally:
        proc.kill()
        proc.wait()


def test_a_video_file_as_the_camera_and_the_recording(tmp_path, make_clip):
    """--source: the server's file is every session's camera (the page gets the source back on
    a second track); --record: the edited output lands in an mp4 when the session ends."""
    from streamedit_core.io.video import VideoReader

    clip = make_clip("source.mp4", frames=24, w=96, h=64, fps=12)
    record = tmp_path / "out.mp4"
    server = LiveServerProcess("--size", "64", "--source", str(clip), "--record", str(record),
                               log_path=tmp_path / "server.log").start()
    try:
        assert server.info()["source"] == "source.mp4"

        async def scenario():
            from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
            import aiohttp

            from streamedit_core.live.rtc import pinned_ice_addresses

            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.createDataChannel("control")
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
            sizes: dict[int, set] = {0: set(), 1: set()}

            async def count(track, index):
                try:
                    while True:
                        f = await track.recv()
                        sizes[index].add((f.width, f.height))
                except Exception:
                    pass

            tasks = []
            pc.on("track", lambda t: tasks.append(asyncio.ensure_future(
                count(t, [x.receiver.track for x in pc.getTransceivers()].index(t)))))
            with pinned_ice_addresses(["127.0.0.1"]):
                await pc.setLocalDescription(await pc.createOffer())
            async with aiohttp.ClientSession() as http:
                async with http.post(server.url + "api/offer",
                                     json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                    assert r.status == 200, await r.text()
                    answer = await r.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            stats = lambda: server.request("GET", f"api/sessions/{answer['session']}")[1]  # noqa: E731
            await asyncio.to_thread(wait_until, lambda: stats()["frames_edited"] >= 8, 60, what="edited frames")
            assert sizes == {0: {(64, 64)}, 1: {(96, 64)}}  # edited (the session's size), source (the file's)
            for t in tasks:
                t.cancel()
            await pc.close()
            await asyncio.to_thread(server.wait_sessions, 0, 15)

        asyncio.run(scenario())
        recorded = torch_frames(VideoReader(record))
        assert recorded.shape[1:] == (64, 64, 3) and recorded.shape[0] >= 8
    finally:
        server.stop()


def torch_frames(reader):
    import torch
    return torch.cat(list(reader))
