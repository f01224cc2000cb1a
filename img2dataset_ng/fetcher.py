"""Downloads one url: http(s) only, one deadline for the whole request, a cap on the bytes read.

Failures raise `FetchError` with a short, stable message (they become the `error_message` of the
row) and whether a later attempt could succeed.

Socket timeouts only bound each read, so a server that drips bytes (headers or body) could hold
a request forever. A `Watchdog` thread therefore shuts down the socket of any request that
outlives its deadline, wherever it is blocked: connecting, in TLS, reading headers or the body.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    HTTPError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from .config import FetchConfig

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
MAX_REDIRECTS = 10
CHUNK_BYTES = 256 * 1024
X_ROBOTS_TAG_REFUSAL = "Use of image disallowed by X-Robots-Tag directive"


class FetchError(Exception):
    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


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


def user_agent(token: str | None) -> str:
    return f"{USER_AGENT} (compatible; img2dataset-ng{'; ' + token if token else ''})"


def is_disallowed(header_values: Iterable[str], user_agent_token: str | None, directives: Iterable[str]) -> bool:
    """Whether an X-Robots-Tag header refuses use, for everyone or for our user agent token."""
    refused = set(directives)
    token = user_agent_token.strip().lower() if user_agent_token else None
    for value in header_values:
        scope, _, rules = value.rpartition(":")
        scope = scope.strip().lower()
        if scope and scope != token:
            continue
        if any(rule.strip().lower() in refused for rule in rules.split(",")):
            return True
    return False


def _guarded(connection_class: type[HTTPConnection], current: threading.local) -> type[HTTPConnection]:
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


class Fetcher:
    """Thread-safe: one per worker, shared by its download threads (connections are pooled)."""

    def __init__(self, config: FetchConfig):
        self.config = config
        self.watchdog = Watchdog()
        self.current = threading.local()
        self.pool = urllib3.PoolManager(
            num_pools=max(64, config.thread_count),
            maxsize=max(4, config.thread_count),
            block=False,
            retries=False,
            cert_reqs="CERT_NONE" if config.ignore_ssl_certificate else "CERT_REQUIRED",
            headers={"User-Agent": user_agent(config.user_agent_token)},
        )
        self.pool.pool_classes_by_scheme = {
            "http": type(
                "GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": _guarded(HTTPConnection, self.current)}
            ),
            "https": type(
                "GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": _guarded(HTTPSConnection, self.current)}
            ),
        }

    def close(self) -> None:
        self.watchdog.close()
        self.pool.clear()

    def fetch(self, url: str | None) -> bytes:
        """The body of `url`, retrying what can succeed later; raises FetchError."""
        check_url(url)
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except FetchError as error:
                if not error.retryable or attempt >= self.config.retries:
                    raise
                backoff = min(0.5 * 2**attempt, 8.0)
                # honour Retry-After, but never wait longer than one more timeout for it
                time.sleep(min(max(backoff, error.retry_after or 0.0), self.config.timeout))
            attempt += 1

    def _fetch_once(self, url: str) -> bytes:
        guard = self.watchdog.watch(time.monotonic() + self.config.timeout)
        self.current.guard = guard
        try:
            return self._follow(url, guard)
        except FetchError:
            raise
        except BaseException as error:  # noqa: BLE001 - every transport failure becomes a row reason
            raise _as_fetch_error(error, guard) from None
        finally:
            guard.finish()
            self.current.guard = None

    def _follow(self, url: str, guard: Guard) -> bytes:
        deadline = guard.deadline
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(url, deadline)
            try:
                if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                    url = urljoin(url, response.headers["Location"])
                    check_url(url)
                    continue
                if response.status >= 400:
                    retryable = response.status == 429 or response.status >= 500
                    raise FetchError(
                        f"HTTP Error {response.status}: {response.reason}",
                        retryable,
                        _seconds(response.headers.get("Retry-After")),
                    )
                directives = self.config.disallowed_header_directives
                if directives and is_disallowed(
                    response.headers.getlist("X-Robots-Tag"), self.config.user_agent_token, directives
                ):
                    raise FetchError(X_ROBOTS_TAG_REFUSAL)
                body = self._read_body(response, guard)
                guard.finish()  # before the connection goes back to the pool
                response.release_conn()
                return body
            finally:
                response.close()
        raise FetchError("too many redirects")

    def _request(self, url: str, deadline: float) -> urllib3.BaseHTTPResponse:
        remaining = _remaining(deadline)
        return self.pool.request(
            "GET",
            url,
            preload_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=remaining, read=remaining),
        )

    def _read_body(self, response: urllib3.BaseHTTPResponse, guard: Guard) -> bytes:
        limit = self.config.max_download_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError("too large")
        chunks, size = [], 0
        while True:
            _remaining(guard.deadline)
            chunk = response.read1(CHUNK_BYTES)
            if guard.expired:  # the watchdog cut the socket: what was read is incomplete
                raise FetchError("timed out", retryable=True)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise FetchError("too large")
            chunks.append(chunk)
        return b"".join(chunks)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("timed out", retryable=True)
    return remaining


def check_url(url: str | None) -> None:
    if not url or not isinstance(url, str) or not url.strip():
        raise FetchError("empty url")
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise FetchError("invalid url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError("unsupported url scheme")
    if not parts.hostname:
        raise FetchError("invalid url")


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds, when given as a number (an HTTP date is ignored)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:
        return None


def _caused_by(error: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """Whether `error`, its arguments or its context chain hold an exception of `kind`."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return False


def _as_fetch_error(error: BaseException, guard: Guard) -> FetchError:
    """A transport failure as a short, stable row reason (order matters: urllib3's
    NewConnectionError is also a ConnectTimeoutError)."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise error
    if guard.expired:
        return FetchError("timed out", retryable=True)
    for kinds, message, retryable in (
        (http.client.IncompleteRead, "incomplete body", True),
        (NameResolutionError, "name resolution failed", True),
        (ConnectionRefusedError, "connection refused", True),
        (NewConnectionError, "connection error", True),
        ((Urllib3Timeout, TimeoutError), "timed out", True),
        ((SSLError, ssl.SSLError), "ssl error", False),
        (LocationParseError, "invalid url", False),
        ((ProtocolError, HTTPError, OSError), "connection error", True),
    ):
        if _caused_by(error, kinds):
            return FetchError(message, retryable)
    return FetchError(f"download error: {type(error).__name__}")
