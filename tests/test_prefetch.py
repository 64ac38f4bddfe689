"""maxsim.background.prefetched: items made ahead by a thread, in order, errors and early stops."""

import threading
import time

import pytest

from maxsim.background import prefetched


def test_same_items_in_the_same_order():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetched(iter([]))) == []


def test_an_error_is_raised_at_the_item_it_replaced():
    def items():
        yield 1
        yield 2
        raise ValueError("bad line 3")

    got = []
    with pytest.raises(ValueError, match="bad line 3"):
        for item in prefetched(items()):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_the_thread():
    made = []

    def items():
        for i in range(10_000):
            made.append(i)
            yield i

    before = threading.active_count()
    for item in prefetched(items(), depth=2):
        if item == 3:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    assert len(made) < 20  # at most depth items made ahead of the one it stopped at (and one in hand)
