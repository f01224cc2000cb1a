"""The fetch stage: downloads a sample's url, http(s) only, one deadline for the whole request, a
cap on the bytes read.

Failures raise `FetchError` (failed_to_download) with a short, stable message that becomes the
row's `error_message`, and whether a later attempt could succeed. The deadline is enforced by a
watchdog (`watchdog.py`) that cuts the socket of a request that outlives it, and covers name
resolution too. Where a request may connect (every hop, redirects included) is decided by
`network.py`; https to http redirects are refused unless `allow_https_downgrade`.

Politeness (`politeness.py`): the stage schedules the shard's samples by host, gives a sample's slot
back as soon as its request ends, and turns a failure that may succeed later into `Deferred` (the
sample waits in its host's queue, no thread sleeps); opt-outs (`robots.py`, the TDM-Rep
`tdm-reservation` header, X-Robots-Tag) are checked before the image is requested or read.

Bodies are counted in the process's memory budget (`budget.bodies`) while they are read and until the
sample drops them (`Sample.release_source`), so that many threads reading large bodies wait for
memory instead of taking `thread_count x max_download_bytes` of it.
"""

from __future__ import annotations

import functools
import http.client
import io
import math
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
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

from ..budget import Budget, bodies
from ..config import FetchConfig
from ..sample import URL, Deferred, Sample, StageError, Status
from .base import Stage
from .network import NetworkError, Policy, Route, routed, shared_resolver
from .politeness import TABLE, HostScheduler, Outcome
from .robots import MAX_ROBOTS_BYTES, NoAnswer, RobotsAnswer, shared_robots
from .watchdog import Guard, Watchdog, guarded

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
CHUNK_BYTES = 256 * 1024
MAX_ROBOTS_REDIRECTS = 5  # RFC 9309: follow at least five
X_ROBOTS_TAG_REFUSAL = "Use of image disallowed by X-Robots-Tag directive"
TDM_REP_REFUSAL = "Use of image disallowed by TDM-Rep tdm-reservation header"
ROBOT_TOKENS = ("img2dataset-ng", "img2dataset")  # robots.txt groups we obey, after user_agent_token's


class FetchError(StageError):
    """A download failure: `message` is the row's reason; `retryable`: a later attempt may succeed;
    `outcome`: what it says about the host (for politeness)."""

    def __init__(
        self,
        message: str,
        retryable: bool = False,
        retry_after: float | None = None,
        outcome: Outcome = Outcome.NEUTRAL,
    ):
        super().__init__(message, Status.FAILED_TO_DOWNLOAD)
        self.retryable = retryable
        self.retry_after = retry_after
        self.outcome = outcome


def host_of(url: object) -> str | None:
    """The host a url's requests count against (lowercased), None when it has none."""
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url.strip()).hostname or None
    except ValueError:
        return None


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


class Fetch(Stage):
    """Fills `sample.source` and `sample.data` with the body of the sample's url.

    One per shard, shared by its threads (connections are pooled and kept alive), with the shard's
    host scheduler. The resolver, the robots.txt cache and the memory budget are the process's,
    shared by its shards.
    """

    failure = Status.FAILED_TO_DOWNLOAD

    def __init__(self, config: FetchConfig):
        self.config = config
        self.watchdog = Watchdog()
        self.current = threading.local()  # the guard and route of the request running on each thread
        self.policy = Policy(public_only=config.public_addresses_only)
        self.resolver = shared_resolver(config.resolve)
        self.budget: Budget = bodies(config.memory_budget, config.processes_per_machine)
        tokens = ((config.user_agent_token,) if config.user_agent_token else ()) + ROBOT_TOKENS
        self.robots = shared_robots(tokens) if config.respect_robots_txt else None
        self.hosts: HostScheduler | None = None
        self.positions: dict[int, int] = {}
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
                "GuardedHTTPPool",
                (HTTPConnectionPool,),
                {"ConnectionCls": guarded(routed(HTTPConnection, self.current), self.current)},
            ),
            "https": type(
                "GuardedHTTPSPool",
                (HTTPSConnectionPool,),
                {"ConnectionCls": guarded(routed(HTTPSConnection, self.current), self.current)},
            ),
        }

    def scheduler(self, samples: Sequence[Sample]) -> HostScheduler:
        """This shard's per-host scheduler (`politeness.py`): caps and interval per worker process."""
        config = self.config
        interval = config.min_host_interval
        if config.max_host_rate is not None:  # the job's budget for a host, shared by its workers
            interval = max(interval, config.workers / config.max_host_rate)
        self.hosts = HostScheduler(
            (host_of(s.row.get(URL)) if s.ok else None for s in samples),
            config.max_host_concurrency,
            interval,
            table=TABLE,
        )
        self.positions = {id(sample): position for position, sample in enumerate(samples)}  # the scheduler's indices
        return self.hosts

    def __call__(self, sample: Sample) -> None:
        """One attempt; a failure that a later one may mend, with attempts left, defers the sample."""
        url = check_url(sample.row[URL])
        self.current.requests = 0
        position = self.positions.get(id(sample))
        hosts = self.hosts if position is not None else None  # None: a sample fetched outside a shard
        try:
            given_up = hosts.given_up(position) if hosts is not None else None
            if given_up is not None:
                raise FetchError(given_up)
            body = self._fetch_once(url)
        except FetchError as error:
            again = time.monotonic()
            if hosts is not None:
                again = hosts.release(position, error.outcome, error.retry_after, self.current.requests, error.message)
            if error.retryable and sample.attempts < self.config.retries and not math.isinf(again):
                sample.attempts += 1
                raise Deferred(max(again, time.monotonic() + min(0.5 * 2 ** (sample.attempts - 1), 8.0))) from None
            raise
        if hosts is not None:
            hosts.release(position, Outcome.SUCCESS, requests=self.current.requests)
        if not body:
            raise FetchError("empty body")
        sample.source = sample.data = body
        sample.release_source = functools.partial(self.budget.release, len(body))

    def close(self) -> None:
        if self.hosts is not None:
            self.hosts.close()
        self.watchdog.close()
        self.pool.clear()

    def fetch(self, url: str | None) -> bytes:
        """The body of `url`, on this thread, retrying what can succeed later; raises FetchError. For use
        outside a shard (no host scheduler): the body's `len` bytes stay taken from `self.budget`."""
        sample = Sample(0, "", {URL: url})
        while True:
            try:
                self(sample)
                return sample.source or b""
            except Deferred as deferred:
                time.sleep(max(0.0, deferred.at - time.monotonic()))

    def _fetch_once(self, url: str) -> bytes:
        guard = self.watchdog.watch(time.monotonic() + self.config.timeout)
        self.current.guard = guard
        self.current.route = Route(self.policy, self.resolver, guard.deadline)
        try:
            return self._follow(url, guard)
        except FetchError:
            raise
        except NetworkError as error:
            raise _network_error(error) from None
        except BaseException as error:  # noqa: BLE001 - every transport failure becomes a row reason
            raise _as_fetch_error(error, guard) from None
        finally:
            guard.finish()
            self.current.guard = self.current.route = None

    def _follow(self, url: str, guard: Guard) -> bytes:
        deadline = guard.deadline
        for _ in range(MAX_REDIRECTS + 1):
            if self.robots is not None:  # every hop: the image is requested from the last one
                self._check_robots(url, deadline)
            response = self._request(url, deadline)
            try:
                location = response.headers.get("Location") if response.status in REDIRECT_STATUSES else None
                if location:
                    url = self._redirect(url, location)
                    continue
                if response.status >= 400:
                    raise _status_error(response)
                self._check_opt_outs(response)
                body = self._read_body(response, guard)
                guard.finish()  # before the connection goes back to the pool
                response.release_conn()
                return body
            finally:
                response.close()
        raise FetchError("too many redirects")

    def _check_opt_outs(self, response: urllib3.BaseHTTPResponse) -> None:
        """Refuse an image whose answer's headers reserve it: X-Robots-Tag directives, TDM-Rep."""
        directives = self.config.disallowed_header_directives
        if directives and is_disallowed(
            response.headers.getlist("X-Robots-Tag"), self.config.user_agent_token, directives
        ):
            raise FetchError(X_ROBOTS_TAG_REFUSAL, outcome=Outcome.REFUSED)
        if self.robots is not None and response.headers.get("tdm-reservation", "").strip() == "1":
            raise FetchError(TDM_REP_REFUSAL, outcome=Outcome.REFUSED)

    def _check_robots(self, url: str, deadline: float) -> None:
        """Refuse `url` if its origin's robots.txt does. When this thread's own robots.txt request got no
        answer, the url fails with that transport failure (its host may be down), not as a refusal."""
        self.current.robots_failure = None
        try:
            refusal = self.robots.check(url, self._robots_answer, deadline)  # type: ignore[union-attr]
        except NoAnswer as no_answer:  # this thread's own request, or another one's that it waited for
            raise self.current.robots_failure or FetchError(no_answer.reason, retryable=True) from None
        if refusal is not None:
            raise FetchError(refusal, outcome=Outcome.REFUSED)

    def _robots_answer(self, url: str) -> RobotsAnswer:
        """robots.txt at `url`, within the current request's deadline: at most MAX_ROBOTS_BYTES of it,
        redirects followed (MAX_ROBOTS_REDIRECTS). A transport failure is an answer without a status, and
        is kept in `current.robots_failure` for `_check_robots`."""
        try:
            return self._read_robots(url, self.current.guard.deadline)
        except NetworkError as error:
            failure = _network_error(error)
        except FetchError as error:
            failure = error
        except BaseException as error:  # noqa: BLE001 - a transport failure: no answer, with its reason
            failure = _as_fetch_error(error, self.current.guard)
        self.current.robots_failure = failure
        return RobotsAnswer(None, reason=failure.message)

    def _read_robots(self, url: str, deadline: float) -> RobotsAnswer:
        for _ in range(MAX_ROBOTS_REDIRECTS + 1):
            response = self._request(url, deadline)
            try:
                location = response.headers.get("Location") if response.status in REDIRECT_STATUSES else None
                if not location:
                    body = response.read(MAX_ROBOTS_BYTES) if 200 <= response.status < 300 else b""
                    if self.current.guard.expired:  # cut by the watchdog: what was read is not the file
                        raise FetchError("timed out", retryable=True, outcome=Outcome.OVERLOADED)
                    if body and len(body) < MAX_ROBOTS_BYTES:  # read to its end: the image may use the connection
                        response.release_conn()
                    return RobotsAnswer(response.status, body)
                url = self._redirect(url, location)
            finally:
                response.close()  # a connection with unread bytes (a long robots.txt) is not reused
        return RobotsAnswer(399)  # too many redirects: RFC 9309 takes it as unavailable (allowed)

    def _redirect(self, url: str, location: str) -> str:
        """The url a redirect from `url` leads to, if it may be followed."""
        target = check_url(urljoin(url, location.strip()))
        if not self.config.allow_https_downgrade and _scheme(url) == "https" and _scheme(target) == "http":
            raise FetchError("https to http redirect refused")
        return target

    def _request(self, url: str, deadline: float) -> urllib3.BaseHTTPResponse:
        remaining = _remaining(deadline)
        self.current.requests = getattr(self.current, "requests", 0) + 1
        return self.pool.request(
            "GET",
            url,
            preload_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=remaining, read=remaining),
        )

    def _read_body(self, response: urllib3.BaseHTTPResponse, guard: Guard) -> bytes:
        """The body, read into one buffer whose size is taken from the memory budget (waiting for it
        until the deadline); on failure, what was taken is given back.

        The buffer is a BytesIO sized up front to a declared Content-Length (else grown by half as the
        body comes), whose `getvalue` hands it over without a copy: the body is never held twice, as a list
        of chunks and their join would be, and what the budget counts is what the buffer holds.
        """
        limit = self.config.max_download_bytes
        declared = response.headers.get("Content-Length")
        expected = int(declared) if declared and declared.isdigit() else 0
        if expected > limit:
            raise FetchError("too large")
        buffer, size, capacity = io.BytesIO(), 0, 0
        try:
            if expected:
                capacity = self._grow(buffer, capacity, expected, guard.deadline)
            while True:
                _remaining(guard.deadline)
                chunk = response.read1(CHUNK_BYTES)
                if guard.expired:  # the watchdog cut the socket: what was read is incomplete
                    raise FetchError("timed out", retryable=True, outcome=Outcome.OVERLOADED)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise FetchError("too large")
                if size > capacity:  # more than declared, or nothing was: grow by half (at most 1.5x the body)
                    wanted = min(max(capacity + capacity // 2, CHUNK_BYTES), limit, self.budget.capacity)
                    capacity = self._grow(buffer, capacity, max(size, wanted), guard.deadline)
                buffer.write(chunk)
            buffer.truncate(size)
            body = buffer.getvalue()
        except BaseException:
            self.budget.release(capacity)
            raise
        finally:
            buffer.close()
        self.budget.release(capacity - size)  # a body shorter than its buffer
        return body

    def _grow(self, buffer: io.BytesIO, capacity: int, new: int, deadline: float) -> int:
        """`new`: the buffer's size, now allocated and taken from the budget (`capacity` was already)."""
        if new > self.budget.capacity:  # could never fit, whatever the other threads give back
            raise FetchError("too large for the memory budget")
        if not self.budget.acquire(new - capacity, deadline):
            raise FetchError("timed out waiting for memory", retryable=True)
        try:
            position = buffer.tell()
            buffer.seek(new - 1)
            buffer.write(b"\0")  # one allocation of exactly `new` bytes; what is read overwrites it
            buffer.seek(position)
        except BaseException:
            self.budget.release(new - capacity)
            raise
        return new


def _status_error(response: urllib3.BaseHTTPResponse) -> FetchError:
    """An HTTP error status as a row reason; 429 and 503 throttle the host, other 5xx show it overloaded,
    4xx is an answer (the host is fine)."""
    status = response.status
    if status in (429, 503):
        outcome = Outcome.THROTTLED
    elif status >= 500:
        outcome = Outcome.OVERLOADED
    else:
        outcome = Outcome.SUCCESS
    return FetchError(
        f"HTTP Error {status}: {response.reason}",
        retryable=status == 429 or status >= 500,
        retry_after=_seconds(response.headers.get("Retry-After")),
        outcome=outcome,
    )


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("timed out", retryable=True, outcome=Outcome.OVERLOADED)
    return remaining


def check_url(url: str | None) -> str:
    """`url` without surrounding whitespace, if it is an http(s) url with a host: the string both
    checked and fetched."""
    if not url or not isinstance(url, str) or not url.strip():
        raise FetchError("empty url")
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        raise FetchError("invalid url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError("unsupported url scheme")
    if not parts.hostname:
        raise FetchError("invalid url")
    return url


def _scheme(url: str) -> str:
    return url.partition(":")[0].lower()


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
        return FetchError("timed out", retryable=True, outcome=Outcome.OVERLOADED)
    for kinds, message, retryable, outcome in (
        (http.client.IncompleteRead, "incomplete body", True, Outcome.OVERLOADED),
        (NameResolutionError, "name resolution failed", True, Outcome.UNREACHABLE),
        (ConnectionRefusedError, "connection refused", True, Outcome.UNREACHABLE),
        (NewConnectionError, "connection error", True, Outcome.UNREACHABLE),
        ((Urllib3Timeout, TimeoutError), "timed out", True, Outcome.OVERLOADED),
        ((SSLError, ssl.SSLError), "ssl error", False, Outcome.UNREACHABLE),
        (LocationParseError, "invalid url", False, Outcome.NEUTRAL),
        ((ProtocolError, HTTPError, OSError), "connection error", True, Outcome.OVERLOADED),
    ):
        if _caused_by(error, kinds):
            return FetchError(message, retryable, outcome=outcome)
    return FetchError(f"download error: {type(error).__name__}")


def _network_error(error: NetworkError) -> FetchError:
    """A refusal of the network policy (nothing learnt about the host), or a name that does not resolve."""
    outcome = Outcome.UNREACHABLE if error.unresolved else Outcome.NEUTRAL
    return FetchError(error.message, error.retryable, outcome=outcome)
