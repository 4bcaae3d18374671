"""A TCP relay that holds every chunk for a fixed time each way: a database in another data
centre, on loopback. It runs on its own thread and event loop, beside whatever the benchmark
runs on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from bench import procs


async def _carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 delay: float) -> None:
    """Bytes from ``reader`` to ``writer``, each chunk ``delay`` seconds after it came, in order."""
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while (item := await held.get())[1]:
            await asyncio.sleep(item[0] - time.monotonic())
            writer.write(item[1])
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            held.put_nowait((time.monotonic() + delay, data))
    finally:
        held.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await sender


def _serve(to_port: int, delay: float, port: int, started: threading.Event,
           stop: list[asyncio.AbstractEventLoop]) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to_port)
        await asyncio.gather(_carry(reader, up_writer, delay), _carry(up_reader, writer, delay),
                             return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", port)
        stop.append(asyncio.get_running_loop())
        started.set()
        async with server:
            await asyncio.Event().wait()  # until the loop is stopped

    with contextlib.suppress(RuntimeError):  # "Event loop stopped before Future completed"
        asyncio.run(main())


@contextlib.contextmanager
def relay(to_port: int, rtt: float) -> Iterator[int]:
    """A port that reaches ``to_port`` with ``rtt`` seconds added to every round trip."""
    port, started = procs.free_port(), threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=_serve, args=(to_port, rtt / 2, port, started, loops),
                              name="bench-delay", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the delay relay did not start")
    try:
        yield port
    finally:
        loops[0].call_soon_threadsafe(loops[0].stop)
        thread.join(10)
