"""Job ids: one at a time or drawn for a whole batch, the same shape, in order of time."""

from __future__ import annotations

import itertools
import re

import pytest

from gateway import ids
from gateway.ids import new_id, new_ids

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{16}$")


def test_a_batch_of_ids_are_distinct_and_shaped_as_one() -> None:
    batch = new_ids(500)
    assert len(batch) == 500
    assert len(set(batch)) == 500
    assert all(_SHAPE.match(i) for i in [*batch, new_id()])


def test_no_ids_for_an_empty_batch() -> None:
    assert new_ids(0) == []


def test_an_id_of_a_later_millisecond_sorts_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stamps since 1972 whose last digit crosses every class of the alphabet: - 0-9 A-Z _ a-z.
    millis = [2**36 + d for d in (0, 1, 10, 11, 36, 37, 38, 63, 64)]
    millis += [2**37, 2**40 + 5, 1_795_000_000_000, 2**42 - 1]
    made = []
    for ms in millis:
        monkeypatch.setattr(ids, "time_ns", lambda ms=ms: ms * 1_000_000 + 999_999)
        made.append([*new_ids(3), new_id()])
    flat = [i for batch in made for i in batch]
    assert all(max(a) < min(b) for a, b in itertools.pairwise(made))
    assert len(set(flat)) == len(flat)
    assert not any(i.startswith("-") for i in flat)  # "--id ID" must not read it as an option
