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


# ----- write-over protection -----------------------------------------------------------------------------------


def _same_or_inside(out: Path, source: Path) -> bool:
    """Whether writing `out` would write over `source` (the same file, through any link) or into it (a folder)."""
    if out.exists() and source.exists() and os.path.samefile(out, source):
        return True
    return source.is_dir() and out.resolve().is_relative_to(source.resolve())


def check_not_an_input(out: str | os.PathLike, inputs, flag: str = "--out") -> None:
    """An output path that is one of the command's `inputs` (a file, or a folder it reads) is an error: writing it
    would destroy what the command reads, or change it while it reads."""
    out = Path(out)
    for source in inputs:
        if source is not None and _same_or_inside(out, Path(source)):
            raise ValueError(f"{flag} {out} is also an input of this command ({source}); choose another path")


def check_replaceable(out: str | os.PathLike, overwrite: bool, written_by_us, what: str) -> None:
    """Refuse to replace an existing file that `written_by_us(path)` does not recognise as an output of this
    kind (`what`), unless `overwrite`: a typo in an output path must not destroy a user's file."""
    out = Path(out)
    if out.exists() and not overwrite and not (out.is_file() and written_by_us(out)):
        raise FileExistsError(f"{out} exists and is not {what}; pass --overwrite (overwrite=True) to replace it")


def first_line(path: Path, limit: int = 1 << 16) -> str:
    """The first line of a text file, read at most `limit` bytes deep ('' when it cannot be read as UTF-8)."""
    with open(path, "rb") as handle:
        return handle.readline(limit).decode("utf-8-sig", errors="replace").rstrip("\r\n")


def check_output_folder(folder: str | os.PathLike, overwrite: bool, earlier_output, what: str) -> None:
    """A folder to write into that already holds files, but not an earlier output of this kind
    (`earlier_output(folder)`), is refused unless `overwrite`: its files may be a user's."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if overwrite or not folder.is_dir() or not any(folder.iterdir()) or earlier_output(folder):
        return
    raise FileExistsError(f"{folder} already holds files and is not {what}; choose a new folder, or pass "
                          "--overwrite (overwrite=True) to write there")
