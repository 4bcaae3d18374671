"""Running the sandbox: as its own process (``python -m gateway.sandbox``), or on a thread with
its own event loop (:class:`SandboxThread`: ``ct-gateway serve --sandbox``, and the tests)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading

from aiohttp import web

from gateway.intake.listener import bound_address
from gateway.sandbox import arrivals
from gateway.sandbox.server import create_sandbox


class SandboxThread:
    """The sandbox on a thread with its own event loop; ``url`` is set once it listens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 latency: tuple[float, float] = (0.05, 0.3)) -> None:
        self.app = create_sandbox(latency)
        self.url = ""
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ctgw-sandbox", daemon=True)
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10) or not self.url:
            raise RuntimeError("the sandbox did not start")
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.url = self._loop.run_until_complete(_listen(self._runner, self._host, self._port))
        finally:
            self._ready.set()
        self._loop.run_forever()
        # Let closed connections run their connection_lost callbacks before the loop goes.
        self._loop.run_until_complete(asyncio.sleep(0.01))
        self._loop.close()


async def _listen(runner: web.AppRunner, host: str, port: int) -> str:
    await runner.setup()
    await web.SockSite(runner, arrivals.listener(host, port)).start()
    return bound_address(runner)


async def _serve(host: str, port: int, latency: tuple[float, float]) -> None:
    runner = web.AppRunner(create_sandbox(latency), access_log=None, handler_cancellation=True)
    print(f"sandbox listening {await _listen(runner, host, port)}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.sandbox")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--latency", default="0.05,0.3", help="seconds: LO,HI")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    lo, hi = (float(x) for x in args.latency.split(","))
    asyncio.run(_serve(host, int(port), (lo, hi)))

