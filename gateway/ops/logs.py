"""Logging as one JSON object per line. Messages carry ids and outcomes, never personal data."""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:
        """Frames and the type, never the message: a message may quote request bytes."""
        etype, _, tb = ei
        return "".join(traceback.format_tb(tb)) + (etype.__name__ if etype else "")


class ClientErrors(logging.Filter):
    """aiohttp logs every request it cannot parse, or whose body it cannot decode, as an ERROR
    with a traceback.

    Scanners send such requests all day; that is the client's fault, not ours, and the
    exception's text quotes the bytes sent, a token or a phone among them. So they are
    debug lines with the exception's type only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | RequestPayloadError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "unparsable request: %s", (type(exc).__name__,)
        record.exc_info = None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would write client addresses and paths for every request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
