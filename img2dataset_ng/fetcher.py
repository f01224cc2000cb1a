"""Downloads one url: http(s) only, one deadline for the whole request, a cap on the bytes read.

Failures raise `FetchError` with a short, stable message (they become the `error_message` of the
row) and whether a later attempt could succeed.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterable
from urllib.parse import urljoin, urlsplit

import urllib3
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
    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


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


class Fetcher:
    """Thread-safe: one per worker, shared by its download threads (connections are pooled)."""

    def __init__(self, config: FetchConfig):
        self.config = config
        self.pool = urllib3.PoolManager(
            num_pools=max(64, config.thread_count),
            maxsize=max(4, config.thread_count),
            block=False,
            retries=False,
            cert_reqs="CERT_NONE" if config.ignore_ssl_certificate else "CERT_REQUIRED",
            headers={"User-Agent": user_agent(config.user_agent_token)},
        )

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
            attempt += 1
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))

    def _fetch_once(self, url: str) -> bytes:
        deadline = time.monotonic() + self.config.timeout
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(url, deadline)
            try:
                if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                    url = urljoin(url, response.headers["Location"])
                    check_url(url)
                    continue
                if response.status >= 400:
                    retryable = response.status == 429 or response.status >= 500
                    raise FetchError(f"HTTP Error {response.status}: {response.reason}", retryable)
                directives = self.config.disallowed_header_directives
                if directives and is_disallowed(
                    response.headers.getlist("X-Robots-Tag"), self.config.user_agent_token, directives
                ):
                    raise FetchError(X_ROBOTS_TAG_REFUSAL)
                body = self._read_body(response, deadline)
                response.release_conn()
                return body
            finally:
                response.close()
        raise FetchError("too many redirects")

    def _request(self, url: str, deadline: float) -> urllib3.BaseHTTPResponse:
        remaining = _remaining(deadline)
        try:
            return self.pool.request(
                "GET",
                url,
                preload_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining),
            )
        except BaseException as error:  # noqa: BLE001 - every transport failure becomes a row reason
            raise _as_fetch_error(error) from None

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        limit = self.config.max_download_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError("too large")
        chunks, size = [], 0
        sock = getattr(getattr(response, "connection", None), "sock", None)
        try:
            while True:
                remaining = _remaining(deadline)
                if sock is not None:
                    sock.settimeout(remaining)
                chunk = response.read1(CHUNK_BYTES)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise FetchError("too large")
                chunks.append(chunk)
        except FetchError:
            raise
        except BaseException as error:  # noqa: BLE001
            raise _as_fetch_error(error) from None
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


def _as_fetch_error(error: BaseException) -> FetchError:
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise error
    if isinstance(error, FetchError):
        return error
    reason = getattr(error, "reason", None)
    if isinstance(error, (Urllib3Timeout, socket.timeout, TimeoutError)) or isinstance(reason, Urllib3Timeout):
        return FetchError("timed out", retryable=True)
    if isinstance(error, NameResolutionError) or isinstance(reason, NameResolutionError):
        return FetchError("name resolution failed", retryable=True)
    if isinstance(error, SSLError) or isinstance(reason, SSLError):
        return FetchError("ssl error")
    if isinstance(error, LocationParseError):
        return FetchError("invalid url")
    if isinstance(error, (NewConnectionError, ConnectionRefusedError)) or isinstance(reason, NewConnectionError):
        cause = getattr(reason or error, "__context__", None) or error
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return FetchError("connection refused", retryable=True)
        return FetchError("connection error", retryable=True)
    if isinstance(error, (ProtocolError, ConnectionError, HTTPError, OSError)):
        return FetchError("connection error", retryable=True)
    return FetchError(f"download error: {type(error).__name__}")
