"""Job ids and made-up request numbers: 96 random bits, URL-safe.

They name leads, they guard nothing (the status API wants a token), so a PRNG seeded from the
OS is enough; ``secrets`` would cost a getrandom() system call on every lead.
"""

from __future__ import annotations

import base64
import os
import random

_rng = random.Random(os.urandom(32))


def new_id() -> str:
    return base64.urlsafe_b64encode(_rng.randbytes(12)).decode()


def new_ids(count: int) -> list[str]:
    """``count`` ids from one draw: 12 bytes are 16 characters, so the text splits evenly."""
    text = base64.urlsafe_b64encode(_rng.randbytes(12 * count)).decode()
    return [text[i:i + 16] for i in range(0, 16 * count, 16)]
