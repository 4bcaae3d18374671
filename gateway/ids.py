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
