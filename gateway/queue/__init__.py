"""The durable job queue: the contract (:mod:`.base`) and its backends."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.queue.base import (
    DEFAULT_SITE,
    PENDING,
    Job,
    Purged,
    Put,
    PutResult,
    Queue,
    QueueError,
    State,
    Stats,
    Status,
)


async def open_queue(url: str) -> Queue:
    """Open the backend that ``url`` names (``sqlite:///…``)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SQLiteQueue

        return await SQLiteQueue.open(url)
    raise ValueError(f"unsupported queue backend: {scheme!r}")


__all__ = [
    "DEFAULT_SITE",
    "PENDING",
    "Job",
    "Purged",
    "Put",
    "PutResult",
    "Queue",
    "QueueError",
    "State",
    "Stats",
    "Status",
    "open_queue",
]
