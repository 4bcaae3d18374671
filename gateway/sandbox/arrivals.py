"""When a request reached a socket, by the kernel's clock rather than the event loop's.

The sandbox counts arrivals in sliding 1 s windows, as Calltouch does. A time taken in the
handler is late by however long the sandbox waited for a CPU, so on a busy machine requests
written a full window apart can be counted in one second. Linux stamps every received segment
(``SO_TIMESTAMPNS``); an accepted socket inherits the option from its listener, and
:class:`StampedConnection` reads the stamp together with the data (asyncio's selector loop
reads a stream protocol's socket with ``recv``; uvloop, or a buffered protocol, would bypass
it). Where no stamp is kept, callers use their own clock.
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
import time
import weakref

# The value and the 64-bit timespec of Linux on x86-64 and arm64 (Python does not export the
# constant); other architectures differ, and there the sandbox keeps its own clock.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
STAMPED = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")

# Keyed by file descriptor, which is unique in the process while the connection is open; a
# handler finds its connection through ``transport.get_extra_info("socket").fileno()``.
_connections: weakref.WeakValueDictionary[int, StampedConnection] = weakref.WeakValueDictionary()


class StampedConnection(socket.socket):
    """An accepted connection that keeps the arrival time of the bytes it read last.

    A handler starts once its request's head is read, and no client of the sandbox pipelines,
    so at that moment the last read is of this request: its head, or a rest of the body that
    came in a later segment, stamped later by the gap between the two.
    """

    arrived: float | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancillary, _, _ = self.recvmsg(bufsize, _ANCILLARY, flags)
        if data:
            self.arrived = _stamp(ancillary)
        return data


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) == _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack(raw)
            # The kernel stamps on the wall clock; the sandbox keeps monotonic times.
            return float(seconds + nanoseconds * 1e-9 - _wall_lead())
    return None


def _wall_lead() -> float:
    """How far the wall clock is ahead of the monotonic one.

    Read between two monotonic reads, the tightest of a few: a thread preempted between two
    clock reads would otherwise shift the result by as long as it waited.
    """
    span, lead = float("inf"), 0.0
    for _ in range(5):
        before, wall, after = time.monotonic(), time.time(), time.monotonic()
        if after - before < span:
            span, lead = after - before, wall - (before + after) / 2
    return lead


class StampingListener(socket.socket):
    """A listening socket whose accepted connections are :class:`StampedConnection` s."""

    def accept(self) -> tuple[socket.socket, object]:
        plain, address = super().accept()
        conn = StampedConnection(plain.family, plain.type, plain.proto, fileno=plain.detach())
        _connections[conn.fileno()] = conn
        return conn, address


def listener(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking socket that stamps arrivals where the kernel can."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = StampingListener(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if STAMPED:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def arrived(fileno: int) -> float | None:
    """When the last bytes read on connection ``fileno`` arrived (monotonic), if stamped."""
    conn = _connections.get(fileno)
    return conn.arrived if conn is not None else None
