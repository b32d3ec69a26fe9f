"""Writing files whole or not at all: a temporary name beside the target, then a rename.

Every temporary file is made by `temp_file` and registered until it is published or discarded,
so that no exit path leaves one behind: an exception removes it where it is raised (the writers'
`except`/`__exit__`), and a termination signal (SIGTERM, SIGHUP) removes every registered one,
either by raising `Terminated` where the program runs (the CLI: `raise_on_signals`) or, in a host
process that owns its signals (ComfyUI), by a handler that removes them and then lets the signal
do what it did before (`remove_temp_files_on_signals`).
"""
from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

_live: set[str] = set()  # temporary files this process is writing, not yet published or discarded
_live_lock = threading.Lock()


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) raised as an exception, so that `finally` blocks and
    writers' clean-up run as they do for Ctrl-C. `signum` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def temp_file(path: str | os.PathLike, suffix: str | None = None) -> str:
    """A new empty temporary file beside `path` (hidden: `.name.XXXX<suffix>`), registered until
    `publish` or `discard`. suffix None: `path`'s own suffix (so the format is still known)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory; give a file name")
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem if suffix == path.suffix else path.name}.",
                               suffix=suffix, dir=path.parent)
    os.close(fd)
    with _live_lock:
        _live.add(tmp)
    return tmp


def discard(tmp: str | os.PathLike | None) -> None:
    """Delete a temporary file (if it is still there) and forget it; never raises."""
    if tmp is None:
        return
    tmp = os.fspath(tmp)
    with _live_lock:
        _live.discard(tmp)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as e:  # the caller's own error matters more than this one
        log.warning("could not remove the temporary file %s: %s", tmp, e)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary file onto `path` atomically, with ordinary permissions.

    `tempfile.mkstemp` creates files readable by their owner only (0600); a checkpoint or video
    that a user copies or serves should get the usual 0666 & ~umask, as `open()` would give it.
    If the move fails (`path` became a directory, the disk went away) the temporary file is
    deleted and the error raised: a directory as ValueError, others as they come.
    """
    tmp, path = os.fspath(tmp), Path(path)
    try:
        if path.is_dir():
            raise ValueError(f"output path {str(path)!r} is a directory; give a file name")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    with _live_lock:
        _live.discard(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` whole or not at all (a temporary file beside it, then `publish`)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = temp_file(path, suffix=".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
        publish(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    return path


def live_temp_files() -> list[str]:
    """The temporary files being written now (for tests and diagnostics)."""
    with _live_lock:
        return sorted(_live)


def remove_live_temp_files() -> None:
    """Delete every registered temporary file (a process about to die)."""
    with _live_lock:
        files = list(_live)
    for tmp in files:
        discard(tmp)


def raise_on_signals(signals: tuple[int, ...] = SIGNALS) -> dict[int, object]:
    """Make termination signals raise `Terminated` in the main thread, so that a program ends the
    way Ctrl-C ends it (writers delete their temporary files). Returns the previous handlers (for
    `restore_signals`). Main thread only; elsewhere it does nothing and returns {}."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise Terminated(signum)

    return {s: signal.signal(s, handler) for s in signals}


def remove_temp_files_on_signals(signals: tuple[int, ...] = SIGNALS) -> bool:
    """For a host process whose signals are not ours (ComfyUI): on a termination signal, delete
    the registered temporary files, then do what the signal did before (the default: die by it;
    a previous handler: call it). Installed once; main thread only (False elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for s in signals:
        previous = signal.getsignal(s)
        if getattr(previous, "removes_temp_files", False):
            continue

        def handler(signum, frame, previous=previous):
            remove_live_temp_files()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # SIG_DFL (or unknown: None): die by the signal
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        handler.removes_temp_files = True
        signal.signal(s, handler)
    return True


def restore_signals(previous: dict[int, object]) -> None:
    for s, h in previous.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
