"""Stream registry: chunks across jobs == one StreamEditor; chunk_index rules; interrupts; jobs
as transactions over several opens; clear() releasing on the worker thread."""
import logging
import threading
import weakref

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
    assert reg.drop("a") and not reg.drop("a") and len(reg) == 1
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


class Counter:
    """A stream part: anything with state_dict/load_state_dict."""

    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, d):
        self.value = d["value"]


def test_a_job_commits_or_rolls_back_every_open_as_one():
    reg = StreamRegistry()
    s = reg.open("s", 0, key="m", job="j1")
    s.part("c", Counter).value = 1
    assert reg.open("s", 0, key="m", job="j1") is s  # a second node of the same job
    reg.finish("j1", succeeded=True)
    assert reg.next_chunk("s") == 1
    # a failed job: its changes are undone, the same chunk can be queued again
    reg.open("s", 1, key="m", job="j2").part("c", Counter).value = 2
    with pytest.raises(ValueError, match="nodes of one job disagree on chunk_index \\(1 and 2\\)"):
        reg.open("s", 2, key="m", job="j2")
    reg.finish("j2", succeeded=False)
    assert reg.next_chunk("s") == 1 and reg.open("s", 1, key="m", job="j3").parts["c"].value == 1
    reg.finish("j3", succeeded=True)
    # a failed restart puts the stream it replaced back; a failed start leaves nothing
    reg.open("s", 0, key="m", job="j4").part("c", lambda: Counter(5))
    reg.finish("j4", succeeded=False)
    assert reg.next_chunk("s") == 2 and reg.open("s", 2, key="m", job="j5").parts["c"].value == 1
    reg.finish("j5", succeeded=True)
    reg.open("t", 0, key="m", job="j6")
    reg.finish("j6", succeeded=False)
    assert "t" not in reg


def test_open_checks_before_it_changes_anything(caplog):
    reg = StreamRegistry()
    reg.open("s", 0, key="m", job=None).part("c", Counter)  # outside a job: committed at once
    assert reg.next_chunk("s") == 1
    with pytest.raises(ValueError, match="started with another model"):
        reg.open("s", 1, key="other", job="j1")
    with pytest.raises(ValueError, match="was started \\(chunk 0\\) without a node that keeps its d"):
        reg.open("s", 1, key="m", job="j2").part("d", Counter)
    reg.finish("j2", succeeded=False)
    # a job that ComfyUI never reported (the hook missing): counted as done when the next arrives
    reg.open("s", 1, key="m", job="j3")
    with caplog.at_level(logging.WARNING):
        reg.open("s", 2, key="m", job="j4")
    assert "job 'j3' was never reported finished" in caplog.text


def test_clear_releases_on_the_thread_that_runs_jobs():
    """/free drops streams from ComfyUI's server thread; what they held (possibly a model's last
    reference, whose release runs ComfyUI's model finalizer) is released by the worker's next
    open or finish, never concurrently with the worker's own unloading (that race killed it)."""
    class Model:
        pass

    released_on = []
    reg, owner = StreamRegistry(), Model()
    reg.open("s", 0, key=owner, job=None)
    weakref.finalize(owner, lambda: released_on.append(threading.current_thread().name))
    del owner
    server = threading.Thread(target=reg.clear, name="server")
    server.start()
    server.join()
    assert "s" not in reg and released_on == []
    reg.open("t", 0, key=Model(), job=None)  # the worker's next node
    assert released_on == [threading.current_thread().name]


# --- bounds (issue 49, defect 3) -------------------------------------------------------------
class Tensors:
    """A stream part holding a tensor (as the editor and the STLE caches do)."""

    def __init__(self, device="cpu"):
        self.x = torch.zeros(3, device=device)

    def state_dict(self):
        return {"x": self.x.clone()}

    def load_state_dict(self, d):
        assert d["x"].device == self.x.device, "restored to the part's device"
        self.x = d["x"]


def test_stream_count_is_bounded_least_recently_used_first():
    reg = StreamRegistry(max_streams=3)
    for i in range(5):
        reg.open(f"s{i}", 0, key="m", job=None).part("c", Counter)
    reg.open("s2", 1, key="m", job=None)  # used again: s3 is now the least recently used
    reg.open("s5", 0, key="m", job=None)
    assert len(reg) == 3 and {"s2", "s4", "s5"} == {s for s in ("s0", "s1", "s2", "s3", "s4", "s5") if s in reg}
    with pytest.raises(ValueError, match="stream 's3' does not exist \\(it has no state: the least recently "
                                         "used of 3 streams \\(MAX_STREAMS\\) when stream 's5' started\\)"):
        reg.open("s3", 1, key="m", job=None)
    assert reg.stats()["streams"] == 3 and reg.stats()["max_streams"] == 3


def test_idle_streams_are_dropped_and_the_error_says_why():
    now = [0.0]
    reg = StreamRegistry(idle_seconds=60, clock=lambda: now[0])
    reg.open("old", 0, key="m", job="j1")
    now[0] = 50.0
    reg.finish("j1", succeeded=True)  # finishing counts as use
    now[0] = 100.0
    reg.open("new", 0, key="m", job=None)
    assert "old" in reg
    now[0] = 111.0
    reg.open("new", 1, key="m", job=None)
    assert "old" not in reg and "new" in reg
    with pytest.raises(ValueError, match="no job used it for more than 60 s \\(IDLE_SECONDS\\)"):
        reg.open("old", 1, key="m", job=None)


def test_a_stream_whose_model_is_gone_is_dropped_and_released():
    """In ComfyUI the model's patcher is the stream's owner: when ComfyUI drops the model (another
    checkpoint loaded, /free), the stream cannot go on and must not keep the model alive."""
    import gc

    class Model:
        pass

    model, released = Model(), []
    reg = StreamRegistry()
    stream = reg.open("s", 0, key=None, job=None, owner=model)
    stream.part("c", Counter)
    with pytest.raises(ValueError, match="started with another model"):
        reg.open("s", 1, key=None, job=None, owner=Model())
    weakref.finalize(model, lambda: released.append(True))
    del model, stream
    gc.collect()
    assert released == [True]  # the registry held it weakly
    reg.open("t", 0, key=None, job=None)
    assert "s" not in reg
    with pytest.raises(ValueError, match="its model was unloaded"):
        reg.open("s", 1, key=None, job=None, owner=Model())


def test_free_while_a_job_runs_does_not_split_its_stream():
    """/free drops streams; one that the running job has open goes when the job is done, so the
    job's later nodes get the same stream as its first (before: a new, empty one)."""
    reg = StreamRegistry()
    reg.open("s", 0, key="m", job="j1").part("encoder", Counter)
    reg.finish("j1", succeeded=True)
    first = reg.open("s", 1, key="m", job="j2")
    first.part("encoder", Counter).value = 7
    server = threading.Thread(target=reg.clear)  # POST /free, on ComfyUI's server thread
    server.start()
    server.join()
    second = reg.open("s", 1, key="m", job="j2")  # the job's next node
    assert second is first and second.parts["encoder"].value == 7
    reg.finish("j2", succeeded=True)
    assert "s" not in reg
    with pytest.raises(ValueError, match="dropped by /free"):
        reg.open("s", 2, key="m", job="j3")


def test_rollback_snapshot_is_kept_in_host_memory():
    reg = StreamRegistry()
    reg.open("s", 0, key="m", job=None).part("t", Tensors)
    stream = reg.open("s", 1, key="m", job="j")
    stream.parts["t"].x += 1
    snap = stream.snapshot["t"]["x"]
    assert snap.tensor.device.type == "cpu" and snap.device == stream.parts["t"].x.device
    reg.finish("j", succeeded=False)
    assert torch.equal(stream.parts["t"].x, torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rollback_snapshot_of_a_cuda_stream_is_in_host_memory_and_restored_to_cuda():
    reg = StreamRegistry()
    reg.open("s", 0, key="m", job=None).part("t", lambda: Tensors("cuda"))
    stream = reg.open("s", 1, key="m", job="j")
    stream.parts["t"].x += 1
    assert stream.snapshot["t"]["x"].tensor.device.type == "cpu"
    assert reg.stats()["state_bytes"].get("cpu", 0) >= 12
    reg.finish("j", succeeded=False)
    assert stream.parts["t"].x.device.type == "cuda" and torch.equal(stream.parts["t"].x.cpu(), torch.zeros(3))
