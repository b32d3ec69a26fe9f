"""Writing files whole or not at all: a temporary name beside the target, then a rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary file onto `path` atomically, with ordinary permissions.

    `tempfile.mkstemp` creates files readable by their owner only (0600); a checkpoint or video
    that a user copies or serves should get the usual 0666 & ~umask, as `open()` would give it.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, Path(path))


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` whole or not at all (a temporary file beside it, then `publish`)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
