"""Where a download may connect: which addresses are allowed, and the name resolution that finds them.

A url list from the web is hostile input. Without a policy, a url or a redirect to the cloud metadata
service (169.254.169.254) or to an internal service is fetched like any other, and with
`disable_all_reencoding` its answer is stored as an "image" in a dataset that may be published. So:

- every hop of a request (the url, then each redirect) is resolved once here, each address is
  classified (`category`) and checked (`Policy`), and the socket connects to exactly the address that
  was checked: a name that resolves to a public address for a check and to a private one for the
  connect (DNS rebinding) cannot get through, since there is no second resolution. TLS still uses
  the hostname (SNI and certificate checks): only the socket's destination is chosen here;
- a keep-alive connection reused for a hop is checked again, with the address it was opened to;
- name resolution runs on a small pool of resolver threads and is waited for with what is left of
  the request's deadline, so a resolver that never answers costs one deadline, not glibc's 10 s or
  more; answers are cached briefly, and concurrent lookups of one name share one query.

`Resolver` takes an override table ((host, port) -> addresses, like curl's --resolve) that is
consulted before DNS; overridden addresses go through the same policy.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union

from urllib3.connection import HTTPConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PUBLIC = "public"
LINK_LOCAL = "link-local"
METADATA = "cloud metadata"
ALWAYS_REFUSED = frozenset({LINK_LOCAL, METADATA})  # refused whatever the options

# addresses of cloud instance metadata services (credentials!) that are not all link-local
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean, Hetzner...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network) for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: inside a provider
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 reaches this host on Linux
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: an IPv4 address inside

RESOLVER_THREADS = 32  # per process, started as needed: a bound on concurrent getaddrinfo calls
CACHE_SECONDS = 30.0  # how long an answer is reused (getaddrinfo does not tell the record's TTL)
NEGATIVE_CACHE_SECONDS = 10.0  # how long "no such name" is reused
CACHE_ENTRIES = 20_000
MAX_ADDRESSES = 4  # addresses of one name tried in turn before giving up on connecting


class NetworkError(Exception):
    """A hop refused by the policy, or a name that did not resolve (`unresolved`): `message` is the row's
    reason.

    Not an OSError, so that urllib3 lets it through unchanged from inside a connection.
    """

    def __init__(self, message: str, retryable: bool = False, unresolved: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.unresolved = unresolved


def unresolved(message: str) -> NetworkError:
    """A name that did not resolve (now: a later attempt may succeed)."""
    return NetworkError(message, retryable=True, unresolved=True)


class Address(NamedTuple):
    family: int  # socket.AF_INET or AF_INET6
    ip: str
    category: str  # see `category`

    def sockaddr(self, port: int) -> tuple[Any, ...]:
        return (self.ip, port) if self.family == socket.AF_INET else (self.ip, port, 0, 0)


def category(address: IPAddress) -> str:
    """What an address is, for the policy: "public" (global unicast), or why it is not.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are classified by that address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        address = _embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return METADATA
    if address.is_link_local:
        return LINK_LOCAL
    if address.is_unspecified or address in THIS_NETWORK:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in PRIVATE_NETWORKS) or getattr(address, "is_site_local", False):
        return "private"
    if address in SHARED_NETWORK:
        return "shared"
    return PUBLIC if address.is_global else "reserved"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_NETWORK:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class Policy:
    """Which addresses a hop may connect to.

    Link-local and cloud metadata addresses never; with `public_only` only public ones; and once a
    request went through a public address, a redirect may not lead it to a non-public one (a site on
    the internet must not make us fetch from our own network).
    """

    def __init__(self, public_only: bool = False):
        self.public_only = public_only

    def refusal(self, category: str, after_public: bool) -> str | None:
        """Why a hop to an address of `category` is refused (None: allowed)."""
        if category == PUBLIC:
            return None
        if category in ALWAYS_REFUSED or self.public_only:
            return f"address not allowed: {category}"
        if after_public:
            return f"redirect to {_article(category)} {category} address refused"
        return None


class Route:
    """The hops of one request attempt: what the policy allows next, and its deadline.

    Set on the thread before the request; the connections of `routed` read it.
    """

    __slots__ = ("policy", "resolver", "deadline", "after_public")

    def __init__(self, policy: Policy, resolver: Resolver, deadline: float):
        self.policy = policy
        self.resolver = resolver
        self.deadline = deadline
        self.after_public = False

    def addresses(self, host: str, port: int) -> list[Address]:
        """The addresses of `host` this hop may connect to, in resolver order; raises NetworkError."""
        found = self.resolver.resolve(host, port, self.deadline)
        allowed = [a for a in found if self.policy.refusal(a.category, self.after_public) is None]
        if not allowed:
            raise NetworkError(self.policy.refusal(found[0].category, self.after_public) or "address not allowed")
        return allowed[:MAX_ADDRESSES]

    def enter(self, address: Address) -> None:
        """This hop uses a connection to `address`: check it (again, for a reused connection) and remember it."""
        reason = self.policy.refusal(address.category, self.after_public)
        if reason is not None:
            raise NetworkError(reason)
        if address.category == PUBLIC:
            self.after_public = True


def connect(
    addresses: Sequence[Address], port: int, deadline: float, options: Iterable[tuple[int, int, Any]] | None
) -> tuple[socket.socket, Address]:
    """A TCP socket connected to the first of `addresses` that answers before `deadline`."""
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            sock.settimeout(remaining)
            sock.connect(address.sockaddr(port))
            return sock, address
        except OSError as failed:
            sock.close()
            if isinstance(failed, TimeoutError):
                raise
            error = failed
    raise error


def routed(connection_class: type[HTTPConnection], current: threading.local) -> type[HTTPConnection]:
    """A connection class that connects, and lets a reused connection serve, only as the `Route` in
    `current.route` (the request running on this thread) allows."""

    class Routed(connection_class):  # type: ignore[misc, valid-type]
        address: Address | None = None  # where the socket goes, once connected

        def _new_conn(self) -> socket.socket:
            route: Route = current.route
            host = self._dns_host.strip("[]")
            addresses = route.addresses(host, self.port)
            try:
                sock, self.address = connect(addresses, self.port, route.deadline, self.socket_options)
            except TimeoutError as error:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from error
            except OSError as error:
                raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error
            route.enter(self.address)
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock

        def request(self, *args: Any, **kwargs: Any) -> None:
            if self.sock is not None and self.address is not None:  # reused (or just connected for TLS)
                current.route.enter(self.address)
            super().request(*args, **kwargs)

    return Routed


class _Lookup:
    """One getaddrinfo call in flight, shared by every request that waits for the same name."""

    __slots__ = ("host", "deadline", "done", "addresses", "error")

    def __init__(self, host: str, deadline: float):
        self.host = host
        self.deadline = deadline  # the latest deadline of its waiters: after it, nobody needs the answer
        self.done = threading.Event()
        self.addresses: tuple[Address, ...] = ()
        self.error: NetworkError | None = None


class _Threads:
    """A bounded pool of daemon threads (a resolver stuck in getaddrinfo must not hold the process's
    exit, as ThreadPoolExecutor's would), started only when no thread is idle."""

    def __init__(self, size: int):
        self.size = size
        self.tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.idle = threading.Semaphore(0)
        self.started = 0
        self.lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        self.tasks.put(task)
        if self.idle.acquire(blocking=False):
            return
        with self.lock:
            if self.started < self.size:
                self.started += 1
                threading.Thread(target=self._work, daemon=True, name=f"resolver-{self.started}").start()

    def _work(self) -> None:
        while True:
            self.tasks.get()()
            self.idle.release()


class Resolver:
    """Names to classified addresses, within a deadline; cached for `ttl` seconds, bounded.

    `overrides` maps (host, port) to the addresses to use instead of DNS (like curl's --resolve).
    """

    def __init__(
        self,
        threads: int = RESOLVER_THREADS,
        ttl: float = CACHE_SECONDS,
        negative_ttl: float = NEGATIVE_CACHE_SECONDS,
        max_entries: int = CACHE_ENTRIES,
        overrides: Mapping[tuple[str, int], Sequence[str]] | None = None,
    ):
        self.ttl, self.negative_ttl, self.max_entries = ttl, negative_ttl, max_entries
        self.overrides = {key: literal_addresses(values) for key, values in (overrides or {}).items()}
        # host -> (expiry, addresses or the error to raise); read without the lock
        self.cache: dict[str, tuple[float, tuple[Address, ...] | NetworkError]] = {}
        self.inflight: dict[str, _Lookup] = {}
        self.lock = threading.Lock()
        self.threads = _Threads(threads)

    def resolve(self, host: str, port: int, deadline: float) -> tuple[Address, ...]:
        """The addresses of `host` (never empty), by the time `deadline` passes; raises NetworkError."""
        if self.overrides:
            overridden = self.overrides.get((host.lower(), port))
            if overridden:
                return overridden
        now = time.monotonic()
        cached = self.cache.get(host)
        if cached is None or cached[0] <= now:
            cached = self._literal(host) or self._lookup(host, now, deadline)
        answer = cached[1]
        if isinstance(answer, NetworkError):
            raise NetworkError(answer.message, answer.retryable, answer.unresolved)
        return answer

    def _literal(self, host: str) -> tuple[float, tuple[Address, ...]] | None:
        """An IP address written in the url: classified once, then kept like an answer that never expires."""
        try:
            addresses = literal_addresses([host])
        except ValueError:
            return None
        entry = (float("inf"), addresses)
        self._store(host, entry)
        return entry

    def _lookup(self, host: str, now: float, deadline: float) -> tuple[float, tuple[Address, ...] | NetworkError]:
        with self.lock:
            lookup = self.inflight.get(host)
            if lookup is None:
                lookup = self.inflight[host] = _Lookup(host, deadline)
                self.threads.submit(lambda: self._run(lookup))
            else:
                lookup.deadline = max(lookup.deadline, deadline)
        if not lookup.done.wait(max(0.0, deadline - now)):
            raise unresolved("name resolution timed out")
        return (0.0, lookup.error or lookup.addresses)

    def _run(self, lookup: _Lookup) -> None:
        """On a resolver thread: answer `lookup` (unless all its waiters gave up), cache, wake the waiters."""
        expiry = 0.0
        if time.monotonic() >= lookup.deadline:
            lookup.error = unresolved("name resolution timed out")
        else:
            lookup.addresses, lookup.error, keep = _getaddrinfo(lookup.host)
            expiry = time.monotonic() + (self.ttl if lookup.error is None else self.negative_ttl if keep else 0.0)
        if expiry:
            self._store(lookup.host, (expiry, lookup.error or lookup.addresses))
        with self.lock:
            self.inflight.pop(lookup.host, None)
        lookup.done.set()

    def _store(self, host: str, entry: tuple[float, tuple[Address, ...] | NetworkError]) -> None:
        with self.lock:
            if len(self.cache) >= self.max_entries:
                self._evict()
            self.cache[host] = entry

    def _evict(self) -> None:
        """Drop expired answers, then if need be the oldest half (dicts keep insertion order)."""
        now = time.monotonic()
        for host in [h for h, (expiry, _) in self.cache.items() if expiry <= now]:
            del self.cache[host]
        if len(self.cache) >= self.max_entries:
            for host in list(self.cache)[: len(self.cache) // 2]:
                del self.cache[host]


def literal_addresses(ips: Iterable[str]) -> tuple[Address, ...]:
    """`ips` as classified addresses; ValueError if one is not an IP address."""
    found = []
    for ip in ips:
        address = ipaddress.ip_address(ip)
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        found.append(Address(family, str(address), category(address)))
    return tuple(found)


# answers that another query would repeat (unlike EAI_AGAIN, a temporary failure): worth caching
_DEFINITE_FAILURES = {getattr(socket, name, None) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL")} - {None}


def _getaddrinfo(host: str) -> tuple[tuple[Address, ...], NetworkError | None, bool]:
    """(addresses, error, whether the error is worth caching) for `host`, from the system resolver."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
        ips = dict.fromkeys(info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6))
        addresses = literal_addresses(ips)
    except socket.gaierror as error:
        return (), unresolved("name resolution failed"), error.errno in _DEFINITE_FAILURES
    except (UnicodeError, ValueError):
        return (), NetworkError("invalid url"), True
    except OSError:
        return (), unresolved("name resolution failed"), False
    if not addresses:
        return (), unresolved("name resolution failed"), True
    return addresses, None, False


_shared: tuple[int, dict[tuple, Resolver]] | None = None  # (pid, resolvers by their overrides)
_shared_lock = threading.Lock()


def shared_resolver(overrides: Sequence[tuple[str, int, Sequence[str]]] = ()) -> Resolver:
    """The process's resolver for these `overrides` (`(host, port, addresses)`, the `resolve` option): its
    cache and threads serve every shard; a forked child makes its own."""
    global _shared
    key = tuple((host, port, tuple(addresses)) for host, port, addresses in overrides)
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), {})
        resolvers = _shared[1]
        if key not in resolvers:
            resolvers[key] = Resolver(overrides={(host, port): addresses for host, port, addresses in key})
        return resolvers[key]
