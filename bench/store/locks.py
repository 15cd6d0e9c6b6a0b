"""Locks on the result store, so several writers (a nightly job, a person, two suites on one cluster store) never
do one run twice or overwrite each other.

- A **run lock** (``<run_dir>/.lock``) is held by the suite that trains and writes a run, from before its training
  starts until its record is written. Another suite that finds it held leaves the run to its holder, does its other
  runs, then waits for the holder and takes the result (or the run, if the holder failed).
- A **site lock** (``<site>/.lock``) serialises leaderboard regenerations (read history, compare, write).

Both are ``fcntl`` locks on a file (``filelock``): the operating system drops them when the holding process dies,
however it dies, so a lock left by a killed process is taken over by the next one without any clean-up. The
holder writes who it is (pid, host, time) beside the lock, for the messages of those who wait.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from bench.io import atomic_write_text

LOCK = ".lock"
OWNER = ".lock.owner"


def _mark_owner(folder: Path) -> None:
    """Note who holds the lock, for the messages of those who wait (best effort: on a full disk the lock holds
    without its note)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        atomic_write_text(folder / OWNER, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
    except OSError:
        pass


def owner(folder: Path) -> str:
    """Who holds (or last held) the lock of ``folder``, as its holder wrote it."""
    try:
        return (Path(folder) / OWNER).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def try_lock(folder: Path) -> FileLock | None:
    """Take the lock of ``folder`` if nobody holds it (None otherwise); release it with ``.release()``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    _mark_owner(folder)
    return lock


def wait_lock(folder: Path, log=None, poll: float = 0.5) -> FileLock:
    """Take the lock of ``folder``, waiting for its holder as long as it holds it (who it is is logged once)."""
    lock = try_lock(folder)
    if lock is not None:
        return lock
    if log is not None:
        log(f"waiting for {folder}: another bench holds it ({owner(folder)})")
    lock = FileLock(Path(folder) / LOCK)
    lock.acquire(poll_interval=poll)
    _mark_owner(Path(folder))
    return lock


def is_held(folder: Path) -> bool:
    """Whether some process holds the lock of ``folder`` now (a Ray trial asks before it writes: when the suite that
    started it is gone, the operating system has dropped its lock)."""
    lock = FileLock(Path(folder) / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
