"""LiveSession without a network: the worker thread, its commands, and every way it ends (each
leaving no thread behind). The tiny preset and a fake text encoder keep it fast."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamedit_core.live.session import LiveSession, LiveSettings, SessionEnded


def feed(session: LiveSession, seconds: float, fps: float = 30.0, size=(48, 64)) -> None:
    rng = np.random.default_rng(0)
    base = (rng.random((*size, 3)) * 255).astype(np.uint8)
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end and not session.ended.is_set():
        session.put_frame(np.roll(base, i, axis=1))
        i += 1
        time.sleep(1 / fps)


def live_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "streamedit-live"}


@pytest.fixture
def make_session(live_tiny_model, fake_text):
    sessions = []

    def make(**settings) -> LiveSession:
        s = LiveSession(live_tiny_model, fake_text, "make it a charcoal drawing",
                        LiveSettings(size=32, **settings))
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.stop()
        s.join(10)


def test_frames_go_through_and_commands_apply(make_session):
    s = make_session(steps=3)
    ended = []
    s.on_end = ended.append
    s.start()
    feeder = threading.Thread(target=feed, args=(s, 2.0))
    feeder.start()
    assert s.command({"prompt": "make it a pencil sketch", "transition": 4}).result(10) == \
        {"prompt": "make it a pencil sketch", "read_as": None, "warning": None, "transition": 4}
    assert s.command({"steps": 2}).result(10) == {"steps": 2}
    assert s.command({"reset": True}).result(10) == {"reset": True}
    feeder.join()
    paced = s.next_output()
    assert paced is not None and paced.frame.shape == (32, 32, 3) and paced.frame.dtype == np.uint8
    snap = s.snapshot()
    assert snap["frames_in"] > 30 and snap["frames_edited"] > 0 and snap["steps"] == 2
    s.stop("done")
    assert s.join(10) and ended == ["done"] and s.editor is None
    with pytest.raises(SessionEnded, match=r"the session has ended \(done\)"):
        s.command({"reset": True}).result(1)


def test_a_bad_prompt_command_fails_alone(make_session):
    s = make_session()
    s.start()
    with pytest.raises(ValueError, match="empty"):
        s.command({"prompt": "   "}).result(10)
    assert not s.ended.is_set()


def test_idle_timeout_ends_the_session(make_session):
    s = make_session(idle_timeout_s=0.5)
    s.start()
    assert s.ended.wait(10)
    assert s.end_reason == "nothing heard from the viewer for 0.5 s"
    assert s.join(5)


def test_guard_ends_the_session(make_session):
    s = make_session()
    s.guard = lambda: "the model was unloaded"
    s.start()
    assert s.ended.wait(10) and s.end_reason == "the model was unloaded"


def test_an_editor_error_ends_the_session_with_it(make_session):
    s = make_session()
    s.start()
    s.put_frame(np.zeros((8, 8, 4), np.uint8))  # not RGB: to_rgb refuses it in the worker
    for _ in range(3):
        s.put_frame(np.zeros((8, 8, 3), np.uint8))
    assert s.ended.wait(10)
    assert s.end_reason.startswith("error: expected an [H, W, 3] uint8 frame")


def test_no_worker_thread_outlives_its_session(make_session):
    before = len(live_threads())
    for _ in range(5):
        s = make_session()
        s.start()
        s.stop()
        assert s.join(10)
    assert len(live_threads()) == before
