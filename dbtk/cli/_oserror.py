"""The CLI's one boundary turns every ``OSError`` into one line: the operation, the path and the system's reason.

Kept beside the CLI (not in the core): only ``main()`` needs it, and it reads tracebacks, not dbtk's own state.
"""

from __future__ import annotations

import errno
import os

from dbtk.errors import DbtkError

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
