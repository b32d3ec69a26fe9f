"""Prompt schedules in the core: parsing, the editor following one (whatever the chunking, and as
the old per-frame switching did), the latent path the ComfyUI nodes run, and the CLI's --schedule."""
import pytest
import torch

from streamedit_core.stream.editor import StreamEditor
from streamedit_core.stream.latents import decode_latents, encode_frames, sample_latents
from streamedit_core.stream.schedule import PromptSchedule

from model_helpers import FakeTextEncoder as FakeText


def _frames(n, seed=0):
    return torch.rand(n, 32, 32, 3, generator=torch.Generator().manual_seed(seed))


def test_parse_and_prompt_at():
    s = PromptSchedule.parse("12: make it sepia\n0: make it blue ;  30:make it red\n\n", transition_frames=4)
    assert s.entries == ((0, "make it blue"), (12, "make it sepia"), (30, "make it red"))
    assert s.transition_frames == 4 and s.first == "make it blue"
    assert [s.prompt_at(f) for f in (0, 11, 12, 29, 30, 10_000)] == [
        "make it blue", "make it blue", "make it sepia", "make it sepia", "make it red", "make it red"]
    assert str(s) == "0: make it blue; 12: make it sepia; 30: make it red"
    assert PromptSchedule.single("x").entries == ((0, "x"),)


@pytest.mark.parametrize("text, message", [
    ("5: starts late", "must start at frame 0"),
    ("0: a; 8: b; 8: c", "names a frame twice"),
    ("0: a; eight: b", "entry 2 'eight: b': expected 'frame: prompt'"),
    ("0:   ", "prompt is empty"),
    ("", "must start at frame 0"),
])
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        PromptSchedule.parse(text)


def test_bad_schedules():
    with pytest.raises(ValueError, match="transition_frames must be an int >= 0"):
        PromptSchedule.single("x", transition_frames=-1)
    with pytest.raises(ValueError, match="frames must increase"):
        PromptSchedule(((0, "a"), (9, "b"), (4, "c")))
    with pytest.raises(TypeError, match="prompt must be a string"):
        PromptSchedule.single(None)


SCHEDULE = PromptSchedule.parse("0: ink drawing; 9: watercolor; 17: pencil", transition_frames=8)


def test_editor_follows_a_schedule_whatever_the_chunking(live_tiny_model):
    frames = _frames(30)
    text = FakeText()
    whole = StreamEditor(live_tiny_model, text, SCHEDULE, seed=1, steps=3)
    ref = torch.cat([whole.feed(frames), whole.flush()])
    chunked = StreamEditor(live_tiny_model, text, SCHEDULE, seed=1, steps=3)
    out = torch.cat([chunked.feed(frames[:5]), chunked.feed(frames[5:19]), chunked.feed(frames[19:]),
                     chunked.flush()])
    assert torch.equal(out, ref)
    single = StreamEditor(live_tiny_model, text, "ink drawing", seed=1, steps=3)
    assert not torch.equal(torch.cat([single.feed(frames), single.flush()]), ref)


def test_schedule_equals_switching_by_hand_at_the_entry_frames(live_tiny_model):
    """What the Edit Video node did before schedules lived in the core: split the frames at each
    entry and set_prompt there."""
    frames, text = _frames(30), FakeText()
    by_hand = StreamEditor(live_tiny_model, text, SCHEDULE.first, seed=1, steps=3)
    outs, done = [], 0
    for frame, prompt in SCHEDULE.entries[1:]:
        outs.append(by_hand.feed(frames[done:frame]))
        by_hand.set_prompt(prompt, SCHEDULE.transition_frames)
        done = frame
    outs += [by_hand.feed(frames[done:]), by_hand.flush()]
    scheduled = StreamEditor(live_tiny_model, text, SCHEDULE, seed=1, steps=3)
    assert torch.equal(torch.cat([scheduled.feed(frames), scheduled.flush()]), torch.cat(outs))


def test_reset_restarts_the_schedule_and_set_prompt_replaces_it(live_tiny_model):
    frames, text = _frames(24), FakeText()
    editor = StreamEditor(live_tiny_model, text, SCHEDULE, seed=1, steps=3)
    first = torch.cat([editor.feed(frames), editor.flush()])  # flush resets
    assert editor.prompt == "ink drawing" and editor.schedule == SCHEDULE
    assert torch.equal(torch.cat([editor.feed(frames), editor.flush()]), first)
    editor.set_prompt("pencil")
    assert editor.schedule is None and editor.prompt == "pencil"


def test_latent_path_equals_the_editor(live_tiny_model):
    """The three latent calls (the ComfyUI nodes' STLE Encode, DiT Sampler, STLE Decode), chunk
    by chunk with the stream's caches, give the editor's frames for the same schedule."""
    model, text, frames = live_tiny_model, FakeText(), _frames(28)
    ref_editor = StreamEditor(model, text, SCHEDULE, seed=1, steps=3)
    ref = [ref_editor.feed(frames[:12]), ref_editor.feed(frames[12:])]
    editor = StreamEditor(model, text, SCHEDULE, seed=1, steps=3)
    enc, dec = model.stle.new_cache(), model.stle.new_cache()
    calls = []
    for chunk, expected in zip((frames[:12], frames[12:]), ref):
        latents = encode_frames(model, chunk, enc)
        edited = sample_latents(editor, latents, progress=lambda d, t: calls.append((d, t)))
        assert torch.equal(decode_latents(model, edited, dec), expected)
    assert calls[:4] == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_latent_path_errors(tiny_model, fake_text):
    editor = StreamEditor(tiny_model, fake_text, "x")
    with pytest.raises(ValueError, match="multiple of 4 frames, got 6"):
        encode_frames(tiny_model, _frames(6), tiny_model.stle.new_cache())
    with pytest.raises(ValueError, match="got no frames"):
        encode_frames(tiny_model, _frames(0))
    latents = encode_frames(tiny_model, _frames(8))
    with pytest.raises(ValueError, match=r"one video \[1, C, t, h, w\], got shape \[2, 12, 2, 4, 4\]"):
        sample_latents(editor, latents.expand(2, -1, -1, -1, -1))
    with pytest.raises(ValueError, match="STLE decode takes the latents of one video"):
        decode_latents(tiny_model, latents[0])


def test_cli_schedule(make_clip, tmp_path, capsys):
    from streamedit_core.cli import main
    from streamedit_core.io.video import VideoReader

    src = make_clip("in.mp4", frames=12, w=32, h=32)
    out = tmp_path / "out.mp4"
    assert main(["edit", str(src), "--schedule", "0: make it blue; 8: make it red", "--transition", "4",
                 "-o", str(out), "--preset", "tiny", "--steps", "2", "--quiet"]) == 0
    assert VideoReader(out).num_frames == 12
    assert main(["edit", str(src), "--schedule", "4: late", "-o", str(tmp_path / "x.mp4"),
                 "--preset", "tiny"]) == 2
    assert "error: the prompt schedule must start at frame 0" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
