"""An SQLite queue is served by one gateway: a second ``serve`` on the same file would relay at
twice the pace Calltouch allows. ``serve`` holds an advisory lock on a file beside it while it
runs; the store commands (``dead replay``, ``spam release``, …) do not need it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gateway.config import ConfigError


def hold(db: Path) -> int:
    """Lock ``db``'s serve lock for this process: the descriptor returned holds it until the
    process ends, however it ends."""
    lock = db.with_name(db.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # where the lock cannot be, the store cannot either
        raise ConfigError("CTGW_QUEUE", f"cannot open the queue at {db}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 16, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError("CTGW_QUEUE", f"{db} is served by another gateway (pid {other}); an"
                          " SQLite queue has one, a fleet shares PostgreSQL") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
