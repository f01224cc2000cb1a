"""A whole-request deadline for blocking sockets.

Socket timeouts only bound each read, so a server that drips bytes (headers or body) could hold a
request forever. A `Watchdog` thread therefore shuts down the socket of any request that outlives
its deadline, wherever it is blocked: connecting, in TLS, reading headers or the body. Connection
classes made by `guarded` hand their sockets to the `Guard` of the request on their thread.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from typing import Any

from urllib3.connection import HTTPConnection


class Guard:
    """The deadline of one request and the socket it uses; `expired` once the watchdog cut it."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.expired = False
        self.done = False
        self.lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        with self.lock:
            self.sock = sock
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self.lock:
            if not self.done:
                self.expired = True
                _shutdown(self.sock)

    def finish(self) -> None:
        """The request is over: its socket may go back to the pool and must not be cut any more."""
        with self.lock:
            self.done = True
            self.sock = None


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Watchdog:
    """One thread that expires the guards whose deadline passed."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Guard]] = []
        self.counter = itertools.count()
        self.wakeup = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closed = False

    def watch(self, deadline: float) -> Guard:
        guard = Guard(deadline)
        with self.wakeup:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True, name="fetch-watchdog")
                self.thread.start()
            heapq.heappush(self.heap, (deadline, next(self.counter), guard))
            if self.heap[0][2] is guard:
                self.wakeup.notify()
        return guard

    def _run(self) -> None:
        with self.wakeup:
            while not self.closed:
                now = time.monotonic()
                while self.heap and (self.heap[0][0] <= now or self.heap[0][2].done):
                    _, _, guard = heapq.heappop(self.heap)
                    if not guard.done:
                        guard.expire()
                self.wakeup.wait(self.heap[0][0] - now if self.heap else None)

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()


def guarded(connection_class: type[HTTPConnection], current: threading.local) -> type[HTTPConnection]:
    """A connection class that hands its socket to the guard of the request running on this thread."""

    class Guarded(connection_class):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            guard = getattr(current, "guard", None)
            if guard is not None:
                guard.attach(sock)
            return sock

        def request(self, *args: Any, **kwargs: Any) -> None:
            guard = getattr(current, "guard", None)
            if guard is not None and self.sock is not None:  # a reused keep-alive connection
                guard.attach(self.sock)
            super().request(*args, **kwargs)

    return Guarded
