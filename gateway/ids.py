"""Job ids and made-up request numbers: 16 URL-safe characters that sort by time.

An id is 42 bits of Unix milliseconds (until 2109) then 54 random bits, in base64 with its
alphabet put in ASCII order, so an id made in a later millisecond sorts after one made earlier;
its first character is never "-" (an id must pass as a command-line argument). That keeps the
queue's primary-key index growing at its right edge, so a commit rewrites the same few index
pages; random ids would dirty a page somewhere in the index for every lead.

They name leads, they guard nothing (the status API wants a token), so a PRNG seeded from the
OS is enough; ``secrets`` would cost a getrandom() system call on every lead.
"""

from __future__ import annotations

import base64
import os
import random
from time import time_ns

_rng = random.Random(os.urandom(32))
_NOISE_BITS = 54
_STAMPS = 1 << 42
_TO_SORTED = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz",
)


def new_id() -> str:
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` ids of this millisecond: 12 bytes, 16 characters each."""
    stamp = (time_ns() // 1_000_000 % _STAMPS) << _NOISE_BITS
    raw = b"".join([(stamp | _rng.getrandbits(_NOISE_BITS)).to_bytes(12, "big")
                    for _ in range(count)])
    text = base64.urlsafe_b64encode(raw).translate(_TO_SORTED).decode()
    return [text[i:i + 16] for i in range(0, 16 * count, 16)]
