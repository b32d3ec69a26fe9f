"""io/files.py: whole-or-nothing writes, and no temporary file left on any exit path (issue 49,
defect 4): a failing rename, an exception, a termination signal in the CLI or in a host process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from streamedit_core.io import files
from streamedit_core.io.video import VideoWriter

ROOT = Path(__file__).resolve().parents[1]


def test_a_failing_publish_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The rename onto the target fails (the target is a directory, or the disk goes away): the
    writer's temporary .out.XXXX.mp4 is deleted and the error raised."""
    frames = torch.rand(2, 16, 16, 3)
    target = tmp_path / "out.mp4"
    with pytest.raises(OSError, match="disk went away"):
        with VideoWriter(target, 8, 16, 16) as writer:
            writer.write(frames)
            monkeypatch.setattr(files.os, "replace", _fail)
    assert list(tmp_path.iterdir()) == [] and files.live_temp_files() == []
    monkeypatch.undo()

    with pytest.raises(ValueError, match="out.mp4' is a directory"):
        with VideoWriter(target, 8, 16, 16) as writer:  # made a directory while the writer encodes
            writer.write(frames)
            target.mkdir()
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and target.is_dir()
    assert list(target.iterdir()) == []


def test_publish_onto_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(ValueError, match="out.mp4' is a directory; give a file name"):
        VideoWriter(tmp_path / "out.mp4", 8, 16, 16)
    tmp = files.temp_file(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="is a directory"):
        files.publish(tmp, tmp_path / "out.mp4")
    assert not Path(tmp).exists() and files.live_temp_files() == []
    with pytest.raises(ValueError, match="is a directory"):
        files.write_atomic(tmp_path / "out.mp4", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def _fail(*args, **kwargs):
    raise OSError("disk went away")


HOST = textwrap.dedent("""
    import os, signal, sys, time
    from streamedit_core.io import files
    files.remove_temp_files_on_signals()
    tmp = files.temp_file(sys.argv[1])
    print(tmp, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_host_process_killed_by_a_signal_removes_its_temporary_files(tmp_path, sig):
    """In ComfyUI (a process whose signals are not ours) the temporary files go, then the signal
    does what it did before: the process dies by it."""
    proc = subprocess.Popen([sys.executable, "-c", HOST, str(tmp_path / "out.mp4")], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == tmp_path
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == -sig
    assert list(tmp_path.iterdir()) == []
