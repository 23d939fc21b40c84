"""Waiting for a driver's events in tests: drivers report on a queue from their own threads."""
from __future__ import annotations

import queue
import time

import pytest


def next_event(drv, event_type, timeout: float = 3.0):
    """The next event of `event_type` on `drv.events`, skipping others; fails if none comes in time."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = drv.events.get(timeout=left)
        except queue.Empty:
            break
        if isinstance(event, event_type):
            return event
    pytest.fail(f"no {event_type.__name__} within {timeout} s")
