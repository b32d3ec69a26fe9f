"""StreamState: bounded, preallocated, reset in place, snapshots independent of later steps."""
import pytest
import torch

from streamedit_core.stream.buffer import StreamState


def _state(history_max=3, steps=4):
    s = StreamState(history_max=history_max, steps=steps)
    s.allocate((2, 3, 3), "cpu")
    s.reset(window=history_max)
    return s


def _lat(v):
    return torch.full((2, 3, 3), float(v))


def test_history_keeps_newest_within_window():
    s = _state(history_max=3)
    for i in range(5):
        s.push_history(_lat(i), _lat(-i))
    assert s.history_len == 3
    assert [s.history[j, 0, 0, 0].item() for j in range(3)] == [2.0, 3.0, 4.0]
    assert [s.history_src[j, 0, 0, 0].item() for j in range(3)] == [-2.0, -3.0, -4.0]
    s.trim_history(1)
    assert s.history_len == 1 and s.history[0, 0, 0, 0].item() == 4.0
    s.window = 0
    s.push_history(_lat(9), _lat(9))  # a zero window keeps no history
    assert s.history_len == 1


def test_inflight_levels_admit_and_pop():
    s = _state(steps=3)
    s.admit(_lat(0), _lat(10))
    assert s.levels() == [0]
    s.oldest_level += 1  # what one forward does
    s.admit(_lat(1), _lat(11))
    assert s.levels() == [1, 0]
    s.oldest_level += 1
    s.admit(_lat(2), _lat(12))
    assert s.levels() == [2, 1, 0]
    s.oldest_level += 1  # the oldest reaches level 3 = steps: clean
    latent, src = s.pop_oldest()
    assert latent[0, 0, 0].item() == 0.0 and src[0, 0, 0].item() == 10.0
    assert s.levels() == [2, 1] and s.released == 1
    assert s.inflight[0, 0, 0, 0].item() == 1.0


def test_reset_in_place_keeps_buffers():
    s = _state()
    ptrs = [s.history.data_ptr(), s.inflight.data_ptr()]
    s.push_history(_lat(1), _lat(1))
    s.admit(_lat(1), _lat(1))
    s.next_index = 7
    s.reset(window=1)
    assert (s.history_len, s.n_inflight, s.next_index, s.window) == (0, 0, 0, 1)
    assert [s.history.data_ptr(), s.inflight.data_ptr()] == ptrs


def test_state_dict_round_trip_is_a_copy():
    s = _state()
    s.push_history(_lat(1), _lat(2))
    s.admit(_lat(3), _lat(4))
    s.next_index = 5
    d = s.state_dict()
    s.history.add_(100)  # later in-place work must not change the snapshot
    assert d["history"][0, 0, 0, 0].item() == 1.0
    t = StreamState(history_max=3, steps=4)
    t.load_state_dict(d)
    assert t.latent_shape == (2, 3, 3)
    assert (t.history_len, t.n_inflight, t.next_index) == (1, 1, 5)
    assert torch.equal(t.history, d["history"]) and torch.equal(t.inflight_src, d["inflight_src"])
    sizes = {k: v.numel() for k, v in d.items() if isinstance(v, torch.Tensor)}
    assert sizes == {k: v.numel() for k, v in t.state_dict().items() if isinstance(v, torch.Tensor)}


def test_load_state_dict_rejects_other_sizes():
    d = _state(history_max=3, steps=4).state_dict()
    with pytest.raises(ValueError, match="history_max=3, steps=4.*history_max=2, steps=4"):
        StreamState(history_max=2, steps=4).load_state_dict(d)
