"""Worker processes that end with the process that started them, however it ends.

A worker in the middle of a training run does not notice that its parent is gone: killed with SIGTERM (as `kill`
and `timeout` send) or SIGKILL, the parent would leave it training for minutes as an orphan. So:

- in the parent, `children_end_with_us` turns SIGTERM into `SystemExit` and, on any exit by an exception, ends
  every child process it started (SIGTERM, then SIGKILL after a grace period);
- in each child, `end_with_parent` asks Linux to send it SIGTERM when the parent dies (`PR_SET_PDEATHSIG`, which
  also covers a SIGKILL of the parent), and elsewhere watches the parent's pid; either way the child runs its
  cleanup (e.g. removes its scratch folder) and exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
GRACE_SECONDS = 5.0
"""How long a child has to end after SIGTERM before it is killed."""
WATCH_SECONDS = 0.5
"""Where the OS cannot signal a parent's death, how often a child looks for it."""


def _stop(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def children_end_with_us():
    """In the main thread: SIGTERM raises `SystemExit(143)` here, and when the block is left by an exception,
    every child process that multiprocessing started is ended before the exception goes on."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        yield
    except BaseException:
        end_children()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def end_children(grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to every live child process of multiprocessing, then SIGKILL to those still alive after `grace`."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()


def remove_folder(path, attempts: int = 10) -> None:
    """Remove the folder `path` and what it holds, trying again while it is still there: another thread of the
    process (a logger, a data-loader thread) may write into it while it goes."""
    import shutil

    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.05)


def end_with_parent(parent_pid: int, cleanup=lambda: None) -> None:
    """In a child process started by `parent_pid`: on SIGTERM, or when the parent dies, call `cleanup` and exit."""

    def leave(signum=signal.SIGTERM, frame=None):
        try:
            cleanup()
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    if not ask_for_death_signal():
        threading.Thread(target=_watch, args=(parent_pid, leave), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        leave()


def ask_for_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Linux: `signum` to this process when its parent dies. False where the OS has no such request."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, leave) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_SECONDS)
    leave()
