"""Job ids: one at a time or drawn for a whole batch, the same shape."""

from __future__ import annotations

import re

from gateway.ids import new_id, new_ids

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{16}$")


def test_a_batch_of_ids_are_distinct_and_shaped_as_one() -> None:
    batch = new_ids(500)
    assert len(batch) == 500
    assert len(set(batch)) == 500
    assert all(_SHAPE.match(i) for i in [*batch, new_id()])


def test_no_ids_for_an_empty_batch() -> None:
    assert new_ids(0) == []
