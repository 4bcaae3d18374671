"""The intake baseline: a bare aiohttp handler that reads the body and answers 202.

Run as ``python -m bench.bare [HOST:PORT]``; prints ``listening URL`` once it accepts.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

# The same shape and size as the gateway's answer, so both write the same bytes.
_BODY = b'{"id":"AAAAAAAAAAAAAAAA","status":"queued"}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=_BODY, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/leads", accept)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"listening http://{bound_host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str]) -> None:
    host, _, port = (argv[0] if argv else "127.0.0.1:0").rpartition(":")
    asyncio.run(serve(host, int(port)))


if __name__ == "__main__":
    main(sys.argv[1:])
