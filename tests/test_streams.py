"""Stream registry: chunks across jobs == one StreamEditor; chunk_index rules; interrupts."""
import threading

import pytest
import torch

from streamedit_core.stream.editor import StreamEditor
from streamedit_core.stream.registry import StreamRegistry

from model_helpers import FakeTextEncoder as FakeText


def _frames(n, seed=0):
    return torch.rand(n, 32, 32, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def setup(live_tiny_model):
    text = FakeText()
    kw = dict(model=live_tiny_model, text_encoder=text, prompt="ink drawing", seed=2, steps=3)
    frames = _frames(22)
    editor = StreamEditor(live_tiny_model, text, "ink drawing", seed=2, steps=3)
    ref = torch.cat([editor.feed(frames), editor.flush()])
    return StreamRegistry(), kw, frames, ref


def test_chunks_equal_one_editor_on_the_concatenation(setup):
    reg, kw, frames, ref = setup
    parts = [reg.feed_chunk("cam", 0, frames[:9], **kw), reg.feed_chunk("cam", 1, frames[9:14], **kw)]
    assert reg.next_chunk("cam") == 2
    parts.append(reg.feed_chunk("cam", 2, frames[14:], final=True, **kw))
    assert torch.equal(torch.cat(parts), ref)
    assert "cam" not in reg  # final chunk ends the stream


def test_gap_repeat_and_unknown_stream(setup):
    reg, kw, frames, _ = setup
    reg.feed_chunk("cam", 0, frames[:4], **kw)
    reg.feed_chunk("cam", 1, frames[4:8], **kw)
    with pytest.raises(ValueError, match="got chunk_index 4, expected 2 .*skips chunks"):
        reg.feed_chunk("cam", 4, frames[8:12], **kw)
    with pytest.raises(ValueError, match="got chunk_index 1, expected 2 .*repeats a chunk"):
        reg.feed_chunk("cam", 1, frames[8:12], **kw)
    with pytest.raises(ValueError, match="stream 'other' does not exist .*chunk_index 3, expected 0"):
        reg.feed_chunk("other", 3, frames[:4], **kw)
    with pytest.raises(ValueError, match="chunk_index must be an int >= 0, got -1"):
        reg.feed_chunk("cam", -1, frames[:4], **kw)
    with pytest.raises(ValueError, match="stream_id must be a non-empty string"):
        reg.feed_chunk(" ", 0, frames[:4], **kw)
    with pytest.raises(ValueError, match="started with another model, text encoder, seed"):
        reg.feed_chunk("cam", 2, frames[8:12], **{**kw, "seed": 9})
    assert reg.next_chunk("cam") == 2  # errors changed nothing


def test_chunk_zero_restarts_and_reset_clear(setup):
    reg, kw, frames, ref = setup
    reg.feed_chunk("cam", 0, _frames(12, seed=9), **kw)
    reg.feed_chunk("cam", 1, _frames(4, seed=8), **kw)
    out = torch.cat([reg.feed_chunk("cam", 0, frames[:11], **kw),  # restart: a fresh stream
                     reg.feed_chunk("cam", 1, frames[11:], final=True, **kw)])
    assert torch.equal(out, ref)
    reg.feed_chunk("a", 0, frames[:4], **kw)
    reg.feed_chunk("b", 0, frames[:4], **kw)
    assert reg.reset("a") and not reg.reset("a") and len(reg) == 1
    reg.clear()
    assert len(reg) == 0 and reg.next_chunk("b") == 0


def test_interrupt_restores_state_and_the_chunk_can_be_requeued(setup):
    reg, kw, frames, ref = setup
    first = reg.feed_chunk("cam", 0, frames[:8], **kw)

    def interrupt(done, total):
        if done >= 8:
            raise InterruptedError("user pressed cancel")

    with pytest.raises(InterruptedError):
        reg.feed_chunk("cam", 1, frames[8:20], progress=interrupt, **kw)
    assert reg.next_chunk("cam") == 1
    ticks = []
    second = reg.feed_chunk("cam", 1, frames[8:20], progress=lambda d, t: ticks.append((d, t)), **kw)
    assert ticks == [(4, 12), (8, 12), (12, 12)]
    last = reg.feed_chunk("cam", 2, frames[20:], final=True, **kw)
    assert torch.equal(torch.cat([first, second, last]), ref)


def test_bad_frames_leave_the_stream_as_it_was(setup):
    reg, kw, frames, ref = setup
    a = reg.feed_chunk("cam", 0, frames[:8], **kw)
    with pytest.raises(ValueError, match="changed mid-stream from 32 x 32 to 64 x 64"):
        reg.feed_chunk("cam", 1, torch.rand(4, 64, 64, 3), **kw)
    with pytest.raises(ValueError, match="NaN"):
        reg.feed_chunk("cam", 1, torch.full((4, 32, 32, 3), float("nan")), **kw)
    b = reg.feed_chunk("cam", 1, frames[8:], final=True, **kw)
    assert torch.equal(torch.cat([a, b]), ref)


def test_prompt_change_between_chunks_matches_set_prompt(live_tiny_model):
    text = FakeText()
    frames = _frames(16, seed=3)
    editor = StreamEditor(live_tiny_model, text, "day", steps=2)
    ref = [editor.feed(frames[:8])]
    editor.set_prompt("night", transition_frames=4)
    ref = torch.cat(ref + [editor.feed(frames[8:]), editor.flush()])
    reg = StreamRegistry()
    kw = dict(model=live_tiny_model, text_encoder=text, steps=2)
    out = torch.cat([reg.feed_chunk("s", 0, frames[:8], prompt="day", **kw),
                     reg.feed_chunk("s", 1, frames[8:], prompt="night", transition_frames=4,
                                    final=True, **kw)])
    assert torch.equal(out, ref)


def test_threads_feeding_different_streams(setup):
    reg, kw, frames, ref = setup
    results, errors = {}, []

    def run(name):
        try:
            parts = [reg.feed_chunk(name, i, frames[i * 8:(i + 1) * 8], final=(i == 2), **kw)
                     for i in range(3)]
            results[name] = torch.cat(parts)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and torch.equal(results["a"], ref) and torch.equal(results["b"], ref)
