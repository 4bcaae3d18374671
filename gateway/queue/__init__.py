"""The durable job queue: the contract (:mod:`.base`) and its backends."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.queue.base import (
    DEFAULT_SITE,
    PENDING,
    Back,
    Job,
    Purged,
    Put,
    PutResult,
    Quarantined,
    Queue,
    QueueError,
    State,
    Stats,
    Status,
    Tally,
)


async def open_queue(url: str) -> Queue:
    """Open the backend that ``url`` names (``sqlite:///…``, ``postgresql://…``); a failure
    is a :class:`QueueError`.

    An OS error (the file cannot be created) becomes one too, so a caller can tell the store's
    failure from another OS error, such as a listener's port in use.
    """
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresQueue  # asyncpg is loaded only by those who use it

        return await PostgresQueue.open(url)
    if scheme != "sqlite":
        raise ValueError(f"unsupported queue backend: {scheme!r}")
    from .sqlite import SQLiteQueue

    try:
        return await SQLiteQueue.open(url)
    except OSError as exc:
        raise QueueError(exc.strerror or str(exc)) from exc


__all__ = [
    "DEFAULT_SITE",
    "PENDING",
    "Back",
    "Job",
    "Purged",
    "Put",
    "PutResult",
    "Quarantined",
    "Queue",
    "QueueError",
    "State",
    "Stats",
    "Status",
    "Tally",
    "open_queue",
]
