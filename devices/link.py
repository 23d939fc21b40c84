"""Online/offline bookkeeping shared by the drivers.

Several threads of a driver (its poller and the daemon's command calls) can notice that the
peer stopped or resumed answering; this object makes sure the daemon hears each transition
exactly once and that the very first state after open() is always announced.
"""
from __future__ import annotations

import logging
import queue
import threading

from devices.base import DeviceEvent, DeviceOffline, DeviceOnline

log = logging.getLogger(__name__)


class LinkState:
    def __init__(self, events: queue.Queue[DeviceEvent], name: str) -> None:
        self._events = events
        self._name = name
        self._online: bool | None = None  # None until the first announcement
        self._lock = threading.Lock()
        self._announced = threading.Event()

    @property
    def online(self) -> bool:
        return bool(self._online)

    @property
    def known(self) -> bool:
        return self._online is not None

    def set_online(self) -> None:
        with self._lock:
            if self._online is True:
                return
            self._online = True
            self._events.put(DeviceOnline())
        log.info("%s: peer online", self._name)
        self._announced.set()

    def set_offline(self, reason: str) -> None:
        with self._lock:
            if self._online is False:
                return
            self._online = False
            self._events.put(DeviceOffline(reason=reason))
        log.warning("%s: peer offline: %s", self._name, reason)
        self._announced.set()

    def wait_announced(self, timeout: float) -> bool:
        return self._announced.wait(timeout)

    def reset(self) -> None:
        """Forget the state (on close) so a later open() announces again."""
        with self._lock:
            self._online = None
            self._announced.clear()
