"""The latency policy, with a fake clock: FrameScheduler (camera -> editor), OutputPacer
(editor -> viewer), and the frame fitting. No model, no network."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from streamedit_core.live.frames import crop_box, fit_frames
from streamedit_core.live.scheduler import FrameScheduler, OutputPacer, pick_even
from streamedit_core.live.session import LiveSettings, parse_command


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_pick_even_keeps_the_newest_and_spreads_the_rest():
    assert pick_even(4, 4) == [0, 1, 2, 3]
    assert pick_even(15, 4) == [0, 5, 9, 14]
    assert pick_even(7, 4) == [0, 2, 4, 6]
    assert pick_even(5, 1) == [4]
    with pytest.raises(ValueError, match="cannot pick 4 of 3"):
        pick_even(3, 4)


def test_a_slow_editor_gets_fresh_evenly_spaced_frames_and_the_rest_is_dropped():
    clock = Clock()
    s = FrameScheduler(max_latency_s=1.0, clock=clock)
    for i in range(15):
        clock.t = i / 30
        s.put(f"f{i}")
    group = s.take(timeout=0)
    assert [a.frame for a in group] == ["f0", "f5", "f9", "f14"]
    assert (s.received, s.taken, s.dropped) == (15, 4, 11)
    assert s.take(timeout=0) is None  # nothing left: dropped, not queued


def test_stale_frames_are_dropped_not_served():
    clock = Clock()
    s = FrameScheduler(max_latency_s=0.5, clock=clock)
    for i in range(3):
        s.put(i)
    clock.t = 2.0  # the editor stalled for 2 s
    for i in range(3, 7):
        s.put(i)
    assert [a.frame for a in s.take(timeout=0)] == [3, 4, 5, 6]
    assert s.dropped == 3


def test_capacity_drops_the_oldest():
    clock = Clock()
    s = FrameScheduler(max_latency_s=10, capacity=8, clock=clock)
    for i in range(20):
        s.put(i)
    assert len(s) == 8 and s.dropped == 12
    assert [a.frame for a in s.take(timeout=0)] == [12, 14, 17, 19]


@pytest.mark.parametrize("compute_s", [0.05, 0.4, 1.5])
def test_latency_stays_bounded_over_a_simulated_minute(compute_s):
    """Camera at 30 fps, an editor taking compute_s per group: the age of the frames it gets
    is bounded by one period (plus the group's fill time) and does not grow over 60 s."""
    clock = Clock()
    s = FrameScheduler(max_latency_s=1.0, clock=clock)
    fps, t_next_frame, ages, i = 30.0, 0.0, [], 0
    while clock.t < 60.0:
        while t_next_frame <= clock.t:  # the camera's frames up to now
            s.put(i, t_next_frame)
            i += 1
            t_next_frame += 1 / fps
        group = s.take(timeout=0)
        if group is None:
            clock.t = t_next_frame  # wait for the next camera frame
            continue
        ages.append(clock.t - group[0].t)  # the oldest frame's wait for the editor
        clock.t += compute_s
    bound = min(compute_s, 1.0) + 4 / fps + 1e-6
    assert max(ages) <= bound, (max(ages), bound)
    ages = ages[2:]  # after the first two groups (the camera had just started)
    first, last = ages[: len(ages) // 4], ages[-len(ages) // 4:]
    assert np.mean(last) <= np.mean(first) + 1 / fps  # no growth (to a frame: phase)
    served = s.taken / s.received
    assert served == pytest.approx(min(1.0, 4 / (compute_s * fps)), abs=0.08)


def test_take_returns_on_wake_and_close():
    s = FrameScheduler()
    results = []
    t = threading.Thread(target=lambda: results.append(s.take(timeout=10)))
    t.start()
    time.sleep(0.05)
    s.wake()
    t.join(2)
    assert results == [None] and not t.is_alive()
    t = threading.Thread(target=lambda: results.append(s.take()))
    t.start()
    time.sleep(0.05)
    s.close()
    t.join(2)
    assert results == [None, None] and not t.is_alive()
    s.put("late")  # ignored after close
    assert len(s) == 0


def test_take_wakes_when_a_group_is_complete():
    s = FrameScheduler()
    got = []
    t = threading.Thread(target=lambda: got.append(s.take(timeout=5)))
    t.start()
    for i in range(4):
        s.put(i)
    t.join(2)
    assert [a.frame for a in got[0]] == [0, 1, 2, 3]


def test_pacer_spreads_groups_over_the_period_and_repeats_between():
    clock = Clock()
    p = OutputPacer(clock=clock)
    assert p.next() is None  # nothing edited yet
    shown, repeats = [], 0
    for k in range(10):  # a group of 4 every 0.4 s, ticks at 30 fps
        clock.t = 0.4 * k
        p.push([f"{k}.{j}" for j in range(4)], [None] * 4, period_hint=0.4)
        for tick in range(12):
            clock.t = 0.4 * k + tick / 30
            out = p.next()
            if out.new:
                shown.append((clock.t, out.frame))
            else:
                repeats += 1
    frames = [f for _, f in shown]
    assert frames == [f"{k}.{j}" for k in range(10) for j in range(4)]  # each once, in order
    gaps = np.diff([t for t, _ in shown])
    assert np.abs(gaps - 0.1).max() <= 1 / 30 + 1e-9  # steady: 0.1 s apart, to the tick
    assert p.skipped == 0 and repeats > 0


def test_pacer_skips_a_backlog_instead_of_delaying():
    clock = Clock()
    p = OutputPacer(clock=clock)
    p.push(list("abcd"), [None] * 4, period_hint=1.0)
    clock.t = 1.0
    p.push(list("efgh"), [None] * 4)  # period 1.0: due 1.0, 1.25, ...
    clock.t = 1.01
    p.push(list("ijkl"), [None] * 4)  # a burst: these would be due more than a period late
    clock.t = 1.02
    assert p.next().frame == "i"  # skipped straight to the newest group
    assert p.skipped >= 4


def test_fit_frames_centre_crops_any_size():
    for h, w in ((480, 640), (1920, 1080), (353, 481), (64, 64), (50, 90)):
        img = np.zeros((h, w, 3), np.uint8)
        top, left, side = crop_box(h, w)
        img[top + side // 2 - side // 8: top + side // 2 + side // 8,
            left + side // 2 - side // 8: left + side // 2 + side // 8] = 255  # a centred square
        out = fit_frames([img], 64)
        assert out.shape == (1, 64, 64, 3) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        centre, corner = out[0, 28:36, 28:36].mean(), out[0, :8, :8].mean()
        assert centre > 0.9 and corner < 0.05, (h, w)


def test_commands_are_checked():
    assert parse_command({"type": "prompt", "prompt": " make it sepia ", "transition": 8}) == \
        {"prompt": "make it sepia", "transition": 8}
    assert parse_command({"reset": True}) == {"reset": True}
    assert parse_command({"type": "steps", "steps": 3}) == {"steps": 3}
    for bad, match in (({"prompt": "x" * 301}, "at most 300"), ({"prompt": ""}, "empty"),
                       ({"prompt": "a", "transition": -1}, "transition"),
                       ({"steps": 0}, r"steps must be an int in \[1, 12\]"),
                       ({"type": "dance"}, "unknown command"), ([1], "JSON object")):
        with pytest.raises(ValueError, match=match):
            parse_command(bad)


def test_settings_are_checked():
    from streamedit_core.config import get_preset
    LiveSettings(size=128).check(get_preset("demo"))
    with pytest.raises(ValueError, match="nearest valid sizes: 96 x 96, 96 x 104, 104 x 96, 104 x 104"):
        LiveSettings(size=100).check(get_preset("demo"))
    with pytest.raises(ValueError, match="max_latency_s must be a positive number"):
        LiveSettings(max_latency_s=0).check()


def test_pacer_delay_stays_under_a_period_with_jittery_groups():
    """Groups every 0.4 s +- 0.15 s: each frame is shown within one period of its group's
    arrival, on average well under it (no lag piles up)."""
    clock = Clock()
    p = OutputPacer(clock=clock)
    rng = np.random.default_rng(0)
    pushes, t, delays = [], 0.0, []
    for k in range(150):
        t += 0.4 + rng.uniform(-0.15, 0.15)
        pushes.append(t)
    pushed_at = {}
    tick, i = 0, 0
    while i < len(pushes) or p.backlog:
        clock.t = tick / 30
        while i < len(pushes) and pushes[i] <= clock.t:
            p.push([(i, j) for j in range(4)], [None] * 4, period_hint=0.4)
            pushed_at[i] = pushes[i]
            i += 1
        out = p.next()
        if out is not None and out.new:
            delays.append(clock.t - pushed_at[out.frame[0]])
        tick += 1
    assert p.skipped / p.pushed < 0.02
    assert max(delays) <= 0.55 + 1 / 30 and np.mean(delays) < 0.25, (max(delays), np.mean(delays))
