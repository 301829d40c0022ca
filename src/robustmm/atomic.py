"""Atomic file writes: a killed run, or a full disk, leaves the previous file intact instead of half a new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(temporary_path)`, then rename the temporary file (same folder) over `path`.

    Whatever fails, the temporary file is removed. A failure of the OS (a full disk, a lost mount) is raised as an
    `OSError` "could not write PATH: REASON" that keeps the errno (e.g. ENOSPC) and has the original exception as
    its cause; other errors (e.g. a bad row met while writing) pass unchanged.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        cause = _os_error(error) if isinstance(error, Exception) else None
        if cause is None:
            raise
        failure = OSError(f"could not write {path}: {os.strerror(cause.errno) if cause.errno else cause}")
        failure.errno = cause.errno  # set apart from the message, which stays as it is
        raise failure from error


def _os_error(error: BaseException | None) -> OSError | None:
    """The OS error behind `error`, which writers in C++ bury under one of their own (torch.save: "unexpected pos
    576 vs 534", with the OSError of the Python file it wrote to as context)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(text))
