"""robots.txt (RFC 9309): whether a site lets this downloader fetch a url, asked once per origin.

Sites that do not want their images in datasets say so in robots.txt, often naming img2dataset. The
fetch stage asks `RobotsCache.check` before each download; the cache fetches each origin's robots.txt
once (through the fetch stage's own client, so the network policy and deadlines apply) and keeps what
it says for a day:

- the rules are parsed by Protego; the group is chosen here: the first of our product tokens that
  names a group (case-insensitively and exactly, groups of the same name merged), else `*`, else
  none (everything allowed). Protego's own choice is looser (see `_select_group`);
- 2xx: the rules; 3xx left after the fetcher's redirects and 4xx other than 429: "unavailable",
  everything allowed; 429 and 5xx: "unreachable", every url of the origin refused, asked again after
  `failure_ttl`; no answer (refused, DNS, TLS, timeout): `NoAnswer` for the urls waiting, nothing kept
  (a robots.txt that was read before and expired keeps applying instead of either);
- one request per origin at a time: the other threads wait for it until their own deadline, and a
  slow origin never delays another one; nothing is fetched or parsed under the lock;
- memory is bounded: origins are evicted least recently used first, by count and by estimated bytes.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from protego import Protego

ROBOTS_REFUSAL = "Use of image disallowed by robots.txt directive"
TIMED_OUT = "robots.txt timed out"
UNREACHABLE = "robots.txt unreachable: {}"
MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: crawlers must parse at least 500 KiB

DEFAULT_PORTS = {"http": 80, "https": 443}

# What a held entry costs, measured with tracemalloc on Protego 0.7.0: parsed rules take 4 to 18 times
# their text (3.6 MiB for 12.5k Disallow lines of 40 characters in 500 KiB, 9 MiB for 34k lines of
# 14 characters; an empty parser 0.4 KiB, a two-line file 1.6 KiB). Raw bodies would be smaller, but
# parsing one costs 0.1 to 0.5 s, far too much per url, so parsed rules are held, and only when a group
# applies to us; this estimate of them is what `max_bytes` bounds.
ENTRY_BYTES = 1536
TEXT_BYTES = 2  # per character of the text
RULE_BYTES = 250  # per Allow or Disallow line


@dataclass(frozen=True)
class RobotsAnswer:
    """What one robots.txt request gave (the fetcher builds it)."""

    status: int | None  # final HTTP status after redirects; None: unreachable (connection, DNS, timeout, TLS)
    body: bytes = b""  # at most MAX_ROBOTS_BYTES bytes (may be cut mid-line)
    reason: str | None = None  # why unreachable, short (e.g. "timed out", "connection refused")


def robots_url(url: str) -> str | None:
    """`scheme://host[:port]/robots.txt` of an http(s) url's origin (default port left out), else None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port out of range or not a number, a bad IPv6 literal
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lowercased, without the brackets of an IPv6 literal
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}/robots.txt"


def product_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
    """The tokens as Protego stores group names (stripped, lowercased), in order, without repeats or `*`."""
    cleaned = (token.strip().lower() for token in tokens)
    return tuple(dict.fromkeys(token for token in cleaned if token and token != "*"))


def decode(body: bytes) -> str:
    """The text to parse: at most MAX_ROBOTS_BYTES, a line cut by that limit dropped, UTF-8, BOM dropped."""
    if len(body) >= MAX_ROBOTS_BYTES:
        body = body[:MAX_ROBOTS_BYTES]
        body = body[: max(body.rfind(b"\n"), body.rfind(b"\r")) + 1]
    return body.decode("utf-8-sig", errors="replace")


def _select_group(parser: Protego, tokens: tuple[str, ...]) -> Any:
    """The rules of the group that applies to `tokens` (already `product_tokens`), or None.

    Protego's own choice (`can_fetch(url, agent)`) is looser than RFC 9309, measured on 0.7.0: a group
    applies when its name occurs in the agent after a word boundary, and the longest such name wins,
    so `User-agent: img2dataset` applies to `img2dataset-ng` and `User-agent: bot` to `my bot`; with a
    one-character token, a `*` group written first wins the tie. So the group is chosen here, exactly,
    from `Protego._user_agents` (group name, stripped and lowercased -> its rules, groups of the same
    name merged; the same in every version since 0.3), and that group's rules are asked directly.
    Protego also files a `foo*` group under `foo`; that leniency is kept: the site means `foo` too.
    """
    groups = parser._user_agents
    for token in tokens:
        if token in groups:
            return groups[token]
    return groups.get("*")


class RobotsRules:
    """What one robots.txt says to us: the rules of the group that applies, or nothing (all allowed)."""

    __slots__ = ("group", "size")

    def __init__(self, group: Any, size: int):
        self.group = group
        self.size = size  # estimated bytes held

    def allows(self, url: str) -> bool:
        """Longest match wins, Allow on a tie, `*` and `$`, path and query percent-normalised (Protego)."""
        if self.group is None or urlsplit(url).path == "/robots.txt":
            return True
        return self.group.can_fetch(url)


def parse_robots(body: bytes, tokens: Sequence[str]) -> RobotsRules:
    """The rules `body` gives the first of `tokens` that names a group (else `*`).

    Parsing 500 KiB takes 0.1 s (12.5k long Disallow lines) to 0.5 s (22k wildcard rules) on Protego
    0.7.0; it runs on the thread that fetched, outside any lock. Matching is linear in the rules that
    contain wildcards: 43 ms per url for 22k of them.
    """
    text = decode(body)
    group = _select_group(Protego.parse(text), product_tokens(tokens))
    if group is None:
        return RobotsRules(None, ENTRY_BYTES)
    group.can_fetch("/")  # Protego indexes the rules on first use: do it now, before threads share them
    size = ENTRY_BYTES + TEXT_BYTES * len(text) + RULE_BYTES * text.lower().count("allow")
    return RobotsRules(group, size)


class _Entry(NamedTuple):
    """An origin's answer: its rules, or a reason to refuse all its urls; until `expires` (cache clock)."""

    rules: RobotsRules | None
    refusal: str | None
    expires: float
    size: int
    no_answer: str | None = None  # the transport's reason, when the request got no answer at all

    def verdict(self, url: str) -> str | None:
        if self.no_answer is not None:
            raise NoAnswer(self.no_answer)
        if self.refusal is not None:
            return self.refusal
        if self.rules is None or self.rules.allows(url):
            return None
        return ROBOTS_REFUSAL


_TIMED_OUT = _Entry(None, TIMED_OUT, 0.0, 0)
_ABORTED = _Entry(None, UNREACHABLE.format("aborted"), 0.0, 0)  # the fetching thread was interrupted


class NoAnswer(Exception):  # noqa: N818 - an outcome, as the fetch stage reports it
    """robots.txt got no answer at all (refused, DNS, TLS, timeout): the url fails with `reason`, the
    transport's own, as its image request would have; nothing is kept."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Flight:
    """One robots.txt request in progress, which the other threads asking for its origin wait for."""

    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: _Entry | None = None


class RobotsCache:
    """robots.txt answers by origin, shared by the threads of a process.

    `clock` measures the time to live of answers; deadlines are `time.monotonic()` values, as in the
    fetch stage.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        max_origins: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        ttl: float = 24 * 3600,
        failure_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tokens = product_tokens(tokens)
        self.max_origins = max_origins
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.clock = clock
        self.requests = 0  # robots.txt requests made
        self.refusals = 0  # urls refused (disallowed, unreachable or timed out)
        self.held_bytes = 0  # estimated bytes of the entries held
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def check(self, url: str, fetch: Callable[[str], RobotsAnswer], deadline: float) -> str | None:
        """None when `url` may be fetched, else the refusal reason for its row; raises `NoAnswer` when the
        origin's robots.txt request got no answer.

        The first thread to ask for an origin calls `fetch(robots_url)` (which bounds its own time); the
        others wait for its answer until their `deadline`. Urls that are not http(s) are not ours to judge.
        """
        origin = robots_url(url)
        if origin is None or urlsplit(url).path == "/robots.txt":
            return None
        reason = self._entry(origin, fetch, deadline).verdict(url)
        if reason is not None:
            with self._lock:
                self.refusals += 1
        return reason

    def cached(self, url: str) -> bool:
        """Whether a usable (not expired) answer for `url`'s origin is held."""
        origin = robots_url(url)
        with self._lock:
            entry = self._entries.get(origin) if origin else None
            return entry is not None and entry.expires > self.clock()

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, origin: str, fetch: Callable[[str], RobotsAnswer], deadline: float) -> _Entry:
        with self._lock:
            held = self._entries.get(origin)
            if held is not None and held.expires > self.clock():
                self._entries.move_to_end(origin)
                return held
            flight = self._flights.get(origin)
            if flight is None:
                flight = self._flights[origin] = _Flight()
                self.requests += 1
                leader = True
            else:
                leader = False
        if not leader:
            if not flight.done.wait(max(0.0, deadline - time.monotonic())):
                return _TIMED_OUT
            return flight.entry or _ABORTED
        try:
            flight.entry = self._ask(origin, fetch, held)
        finally:  # even on KeyboardInterrupt: release the waiters, leave nothing in flight
            with self._lock:
                del self._flights[origin]
                if flight.entry is not None:
                    self._store(origin, flight.entry)
            flight.done.set()
        return flight.entry

    def _ask(self, origin: str, fetch: Callable[[str], RobotsAnswer], held: _Entry | None) -> _Entry:
        """Fetch and parse an origin's robots.txt; `held` is its expired entry, if any."""
        try:
            answer = fetch(origin)
            if answer.status is not None and 200 <= answer.status < 300:
                rules = parse_robots(answer.body, self.tokens)
                return _Entry(rules, None, self.clock() + self.ttl, rules.size)
        except Exception as error:  # noqa: BLE001 - whatever the fetcher or the parser raises: unreachable
            answer = RobotsAnswer(599, reason=type(error).__name__)  # kept failure_ttl, as a 5xx would be
        status = answer.status
        if status is not None and 300 <= status < 500 and status != 429:
            return _Entry(None, None, self.clock() + self.ttl, ENTRY_BYTES)
        if held is not None and held.refusal is None and held.no_answer is None:
            # RFC 9309 2.4: a cached robots.txt may be used past its day while the file is unreachable
            return held._replace(expires=self.clock() + self.failure_ttl)
        reason = answer.reason or (f"HTTP Error {status}" if status is not None else "no answer")
        if status is None:  # not kept: the next url asks again (its host's politeness may give it up first)
            return _Entry(None, None, self.clock(), ENTRY_BYTES, no_answer=reason)
        return _Entry(None, UNREACHABLE.format(reason), self.clock() + self.failure_ttl, ENTRY_BYTES)

    def _store(self, origin: str, entry: _Entry) -> None:
        """Hold `entry` (under the lock), then evict the least recently used beyond the bounds."""
        replaced = self._entries.pop(origin, None)
        if replaced is not None:
            self.held_bytes -= replaced.size
        self._entries[origin] = entry
        self.held_bytes += entry.size
        while len(self._entries) > 1 and (len(self._entries) > self.max_origins or self.held_bytes > self.max_bytes):
            _, evicted = self._entries.popitem(last=False)
            self.held_bytes -= evicted.size


@functools.cache
def shared_robots(tokens: tuple[str, ...]) -> RobotsCache:
    """The process's cache for these tokens, shared by every shard and thread that runs in it."""
    return RobotsCache(tokens)


if hasattr(os, "register_at_fork"):  # a forked child must not inherit a lock another thread held
    os.register_at_fork(after_in_child=shared_robots.cache_clear)
