"""The durable job queue: the contract (:mod:`.base`) and its backends."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import PENDING, Job, Purged, Put, PutResult, Queue, QueueError, State, Stats, Status


async def open_queue(url: str) -> Queue:
    """Open the backend that ``url`` names (``sqlite:///…``; ``redis://`` comes later)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SQLiteQueue

        return await SQLiteQueue.open(url)
    raise ValueError(f"unsupported queue backend: {scheme!r}")


__all__ = [
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
