"""ct-gateway: a durable, rate-limited gateway from website forms to Calltouch."""

from __future__ import annotations

__version__ = "0.1.0"
