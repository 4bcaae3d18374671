"""Job ids and made-up request numbers: 16 URL-safe characters that sort by time.

An id is 48 bits of Unix milliseconds then 48 random bits, in base64 with its alphabet put in
ASCII order, so an id made in a later millisecond sorts after one made earlier. That keeps the
queue's primary-key index growing at its right edge: random ids dirtied one more index page per
lead in every commit, which doubled the bytes each lead wrote to the WAL.

They name leads, they guard nothing (the status API wants a token), so a PRNG seeded from the
OS is enough; ``secrets`` would cost a getrandom() system call on every lead.
"""

from __future__ import annotations

import base64
import os
import random
from time import time_ns

_rng = random.Random(os.urandom(32))
_TO_SORTED = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz",
)


def new_id() -> str:
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` ids of this millisecond from one draw: 12 bytes are 16 characters each."""
    stamp = (time_ns() // 1_000_000).to_bytes(6, "big")
    noise = _rng.randbytes(6 * count)
    raw = b"".join([stamp + noise[i:i + 6] for i in range(0, 6 * count, 6)])
    text = base64.urlsafe_b64encode(raw).translate(_TO_SORTED).decode()
    return [text[i:i + 16] for i in range(0, 16 * count, 16)]
