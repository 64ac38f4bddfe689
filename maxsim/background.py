"""Work done ahead in a background thread: the host prepares the next items while a GPU computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, made ahead by a background thread, at most ``depth`` waiting.

    While a GPU runs one step, the host builds the next batches instead of idling; the order is
    unchanged. An exception in the thread is raised here, at the item it replaced; a consumer
    that stops early (``break``) stops the thread too.
    """
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        waiting.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            waiting.put((done, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            waiting.put((done, err))

    thread = threading.Thread(target=produce, name="maxsim-batches", daemon=True)
    thread.start()
    try:
        while True:
            item, err = waiting.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full queue see the stop
            try:
                waiting.get(timeout=0.1)
            except queue.Empty:
                pass
