"""User-facing errors.

Anything raised as :class:`DbtkError` is a mistake the user can fix (a recipe typo, a missing file, a
broken plugin); the CLI prints it as one red line plus an optional hint, without a traceback.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Iterable


class DbtkError(Exception):
    """An error the user can act on. ``exit_code`` 2 means bad input (usage), 1 means a failed check."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class CheckFailed(DbtkError):
    """A check command found problems (``--check``, ``--budget``, doctor): exit code 1, not a usage error."""

    exit_code = 1


class RecipeError(DbtkError):
    """The recipe (file, ``--set`` override or component table) is invalid."""


class RegistryError(DbtkError):
    """A component is unknown, ambiguous, or its plugin failed to import."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


#: What a failed file-system call was doing, by the name of the innermost Python function in its traceback
#: (pathlib, os, shutil, tempfile). The built-in ``open`` leaves no frame, so its caller's name counts: see
#: :func:`_failed_call`.
_OPERATIONS = {
    "mkdir": "create the folder",
    "makedirs": "create the folder",
    "iterdir": "list the folder",
    "scandir": "list the folder",
    "listdir": "list the folder",
    "glob": "list the folder",
    "rglob": "list the folder",
    "read_text": "read",
    "read_bytes": "read",
    "write_text": "write",
    "write_bytes": "write",
    "touch": "create",
    "stat": "read",
    "unlink": "remove",
    "rmdir": "remove",
    "rmtree": "remove",
    "rename": "move",
    "replace": "move",
    "copyfile": "copy",
    "copy": "copy",
    "copy2": "copy",
    "copytree": "copy",
    "mkstemp": "create a file in",
    "_mkstemp_inner": "create a file in",
}


def _failed_call(exc: OSError) -> tuple[str, str | None]:
    """What the failing call was doing and on which path, read from the exception's innermost frame.

    The path is the exception's ``filename``; an error raised while writing an open file (a full disk) has none,
    so the frame's own path (``self`` of a ``pathlib.Path`` method, or a ``path`` variable) names it instead.
    """
    import traceback

    frames = list(traceback.walk_tb(exc.__traceback__))
    frame = frames[-1][0] if frames else None
    name = frame.f_code.co_name if frame else ""
    path = exc.filename
    if path is None and frame is not None:
        path = next((v for k in ("self", "path") if isinstance(v := frame.f_locals.get(k), os.PathLike)), None)
    path = os.fsdecode(path) if path is not None else None
    if name in _OPERATIONS:
        return _OPERATIONS[name], path
    if exc.filename2 is not None:  # os.replace / os.rename, called from any function
        return "move", path
    mode = frame.f_locals.get("mode") if frame and name == "open" else None  # Path.open, PIL's open
    if isinstance(mode, str):
        return ("read" if set(mode) <= {"r", "b", "t"} else "write"), path
    for verb, words in (("write", ("write", "save", "dump")), ("read", ("read", "load"))):
        if any(word in name for word in words):
            return verb, path
    return "open", path


def file_error(exc: OSError) -> DbtkError:
    """One line for an ``OSError`` on a file: the operation, the path and the system's reason, plus a hint.

    The CLI turns every ``OSError`` that reaches it into this (exit code 2: a path, its permissions or its disk
    must change before a rerun can succeed).
    """
    operation, path = _failed_call(exc)
    if path is not None and operation == "create a file in":  # a temporary file: name the folder it was to go in
        path = os.path.dirname(path) or "."
    where = "" if path is None else f" {path}" if exc.filename2 is None else f" {path} to {os.fsdecode(exc.filename2)}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _FILE_HINTS.get(exc.errno) if exc.errno is not None else None
    return DbtkError(f"cannot {operation}{where}: {reason}", hint.format(path=path or "the path") if hint else None)


_FILE_HINTS = {
    errno.ENOSPC: "the disk is full: free space on the disk holding {path}, or write somewhere else",
    errno.EDQUOT: "your disk quota is used up: free space, or write somewhere else",
    errno.EACCES: "you may not access {path}: check its permissions and its folder's, or use another path",
    errno.EPERM: "the operation is not permitted on {path}: use another path",
    errno.EROFS: "{path} is on a read-only file system: write somewhere else",
    errno.ENOTDIR: "a part of {path} is a file, not a folder",
    errno.EISDIR: "{path} is a folder: give a file",
    errno.EEXIST: "something is already at {path} (a file where a folder belongs?): move it or use another path",
    errno.ENOENT: "check the path (relative paths start in the current folder)",
    errno.ENAMETOOLONG: "shorten the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}
