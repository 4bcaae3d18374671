"""When a request reached a socket, by the kernel's clock rather than the event loop's.

The sandbox counts arrivals in sliding 1 s windows, as Calltouch does. A time taken in the
handler is late by however long the sandbox waited for a CPU, and a loaded 2-core CI runner
made that wait longer than the pacer's 30 ms margin: six requests written 1.03 s apart were
counted in one second. Linux stamps every received segment (``SO_TIMESTAMPNS``); an accepted
socket inherits the option from its listener, and :class:`StampedConnection` reads the stamp
together with the data (asyncio reads a stream protocol's socket with ``recv``). Elsewhere no
stamp is kept and callers use their own clock.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
import weakref

# Linux's value; Python's socket module does not export the constant.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
STAMPED = sys.platform == "linux"

# Keyed by file descriptor, which is unique in the process while the connection is open; a
# handler finds its connection through ``transport.get_extra_info("socket").fileno()``.
_connections: weakref.WeakValueDictionary[int, StampedConnection] = weakref.WeakValueDictionary()


class StampedConnection(socket.socket):
    """An accepted connection that keeps the arrival time of its first unclaimed read."""

    _unclaimed: float | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancillary, _, _ = self.recvmsg(bufsize, _ANCILLARY, flags)
        self._note(ancillary)
        return data

    def claim(self) -> float | None:
        """When the first unclaimed read's bytes arrived (monotonic); later reads start anew.

        A read that takes several TCP segments carries the last one's stamp: late, which
        only makes a window look fuller than it was."""
        at, self._unclaimed = self._unclaimed, None
        return at

    def _note(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and self._unclaimed is None:
                seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
                # The kernel stamps on the wall clock; the sandbox keeps monotonic times.
                offset = time.time() - time.monotonic()
                self._unclaimed = seconds + nanoseconds * 1e-9 - offset


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
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = StampingListener(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if STAMPED:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(address)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def claim(fileno: int) -> float | None:
    """The arrival time of the oldest unclaimed bytes on connection ``fileno``, if stamped."""
    conn = _connections.get(fileno)
    return conn.claim() if conn is not None else None
