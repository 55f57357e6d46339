"""Atomic file writes: a crash, a kill or a full disk leaves the previous file intact, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

#: atomic_write's temporaries are ``.NAME.<random>.tmp`` beside the file they will replace.
TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Run ``write(temporary_path)`` then move the result over ``path``; on failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; checkpoints are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporaries of :func:`atomic_write` left by a process killed mid-write; the real files are intact."""
    for stale in folder.glob(f".*.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
