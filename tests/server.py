"""A real HTTP server on 127.0.0.1 for the tests: generated images, fault-injection routes, virtual hosts.

Every stalling or endless route stops by itself within `MAX_STALL` seconds (`max_stall` of the
`ImageServer`), so no test leaves traffic running. Routes (GET), on every host:

images
- `/img/{w}x{h}.{jpg|png|webp}`: a generated image; `?alpha=1` transparency (png/webp),
  `?gray=1` grayscale, `?seed=N` other content
- `/exif.jpg`: a JPEG with an EXIF block (Image Make = TestCam); `/cmyk.jpg`: a CMYK JPEG
- `/bomb.png`, `/bomb.jpg`: tiny files whose headers declare 30000x30000 / 60000x60000 pixels
- `/big.png`: a real 12000x12000 PNG (144 megapixels, a few hundred KB)
bad content
- `/html`: an HTML page served as image/jpeg; `/empty`: 200 with an empty body
- `/truncated.jpg`: the first half of a JPEG; `/corrupt.jpg`, `/corrupt.png`: valid signature, garbage after
- `/text`: plain text; `/json`: a JSON document, as a metadata service would answer
- `/bytes/{n}`: n bytes with a Content-Length; `/unsized/{n}`: n bytes without one (closes the connection)
protocol faults
- `/status/{code}`: that status (`?retry_after=S` adds Retry-After)
- `/flaky/{name}/{n}/...`: 503 for the first n requests of `name`, then the rest of the path
- `/redirect/{n}/...`: n redirects, then the rest of the path; `/loop`: redirects to itself forever
- `/to?url=U`: a 302 redirect to the absolute url U (`&code=N` another redirect status)
- `/robots/{X-Robots-Tag value}/...`: the rest of the path with that header
- `/slow/{seconds}/...`: the rest of the path after a delay
- `/stall`: headers and half a body, then silence; `/drip`: a body of one byte a second;
  `/drip-headers`: headers of one byte a second
- `/lying-length`: declares 20000 bytes, sends 500 and closes
- `/huge-declared`: declares 200 MB in Content-Length; `/endless`: an unannounced body that never ends
- `/tdm/{tdm-reservation value}/...`: the rest of the path with that header (TDM Reservation Protocol)
- `/once/{code}/{name}/...`: status `code` for the first request of `name`, then the rest of the path
  (a failure that a second pass, or a retry, gets past)
- any path given to `ImageServer.put(path, body)`: those bytes (checked before every other route)

Virtual hosts. Clients may reach the one server under many names (`host_url(host, path)` is
`http://{host}:{port}{path}`, reached through img2dataset-ng's `resolve` option, whose entries
`resolve(*hosts)` makes); the Host header tells them apart (lowercased, port stripped; no header is
host ""). Politeness is a property of hosts, so the server counts per host, always:
- `requests(host)`, `host_log(host)` (the paths requested, in order, query included),
  `active(host)` and `peak(host)` (requests in progress now / at most at once, each counted from
  the request's start to the end of its response: when its last bytes are handed to the socket,
  so that a client's next request never seems to overlap it), `throttled(host)` (429s sent);
  `host_stats(host)` all of them (and first start, last end) at once; `seen_hosts()`;
  `reset_counts()` starts them over (configuration stays).
- `configure_host(host, throttle=None, robots=None, delay=0.0)` replaces that host's configuration,
  before or during a run (no argument: the default again):
  - `throttle=Throttle(rate, retry_after)`: a request that finds `rate` requests admitted in the
    last second (sliding window; refused ones do not count) gets 429 Too Many Requests with
    `Retry-After: retry_after`. `/robots.txt` is never throttled.
  - `robots=`: what `/robots.txt` answers: a `(status, body)` pair, or "stall" (headers, then
    silence), "drip" (a body of one byte a second, without end), "huge" (10 MiB that begin by
    disallowing `/private/` to every agent, sent at once); an unconfigured host answers 404.
  - `delay=`: seconds every response of that host waits before it starts (429s included), so that
    concurrent requests overlap and peaks show.
"""

from __future__ import annotations

import functools
import io
import itertools
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

MAX_STALL = 30.0  # seconds: the longest any route keeps a connection busy


@functools.lru_cache(maxsize=256)
def make_image(width: int, height: int, ext: str, alpha: bool = False, gray: bool = False, seed: int = 0) -> bytes:
    """A smooth gradient image with some structure, so that resizing is meaningful."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, 3)
    channels = [
        127.5 + 127.5 * np.sin(x / max(width, 1) * 6.28 * (i + 1) + y / max(height, 1) * 3.14 + phase[i])
        for i in range(3)
    ]
    img = np.stack(channels, axis=-1).astype(np.uint8)
    if gray:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif alpha:
        a = (255 * (x / max(width - 1, 1))).astype(np.uint8)[..., None]
        img = np.concatenate([img, a], axis=-1)
    ok, data = cv2.imencode("." + ext, img)
    assert ok
    return data.tobytes()


def with_exif(jpeg: bytes, make: str = "TestCam") -> bytes:
    """`jpeg` with an APP1 EXIF segment holding one tag (Image Make), built by hand."""
    value = make.encode() + b"\0"
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, len(value), 8 + 18) + struct.pack("<I", 0)
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd + value
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def bomb_png() -> bytes:
    """30000x30000 declared; a few rows of real data: decoding it would allocate 2.7 GB."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" + b"\0" * (3 * 30000) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


@functools.cache
def bomb_jpg() -> bytes:
    """A small JPEG whose frame header is rewritten to declare 60000x60000 pixels."""
    data = bytearray(make_image(16, 16, "jpg"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


@functools.cache
def big_png() -> bytes:
    ok, data = cv2.imencode(".png", np.full((12000, 12000), 200, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return data.tobytes()


@functools.cache
def cmyk_jpg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("CMYK", (48, 32), (0, 255, 255, 0)).save(out, "JPEG")  # pure red
    return out.getvalue()


ROBOTS_MISBEHAVIOURS = ("stall", "drip", "huge")
ROBOTS_RULES = b"User-agent: *\nDisallow: /private/\n"


@functools.cache
def huge_robots() -> bytes:
    """10 MiB and a bit of robots.txt: real rules first, then comment lines (a server misconfigured
    to serve a log file, or a trap for parsers that read everything)."""
    filler = b"# " + b"x" * 61 + b"\n"  # 64-byte lines
    return ROBOTS_RULES + filler * ((10 * 1024 * 1024) // len(filler) + 1)


@dataclass(frozen=True)
class Throttle:
    """A host that admits `rate` requests per sliding second and answers the rest 429 with Retry-After."""

    rate: int
    retry_after: int = 1


@dataclass(frozen=True)
class HostConfig:
    throttle: Throttle | None = None
    robots: tuple[int, bytes | str] | str | None = None  # None: 404
    delay: float = 0.0


@dataclass
class HostStats:
    """What one host saw; times are `time.monotonic()`."""

    requests: int = 0
    active: int = 0
    peak: int = 0
    throttled: int = 0  # 429s sent
    paths: list[str] = field(default_factory=list)
    first_start: float | None = None
    last_end: float | None = None


def host_name(header: str | None) -> str:
    """The Host header's name, lowercased, without port (or IPv6 brackets); "" when missing or malformed."""
    try:
        return urllib.parse.urlsplit("//" + (header or "").strip()).hostname or ""
    except ValueError:
        return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle's algorithm the body would wait for the client's
    # delayed ACK of the headers (40 ms) on every reused connection
    disable_nagle_algorithm = True
    in_progress: str | None = None  # the host of the request being answered, until its end is counted

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        with self.server.lock:
            self.server.hits[parsed.path] = self.server.hits.get(parsed.path, 0) + 1
            self.server.user_agents[parsed.path] = self.headers.get("User-Agent")
        host = host_name(self.headers.get("Host"))
        config = self.server.begin(host, self.path)
        self.in_progress = host
        try:
            self.serve_host(host, config, parsed.path, query)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            self.close_connection = True
        finally:
            self.response_ends()

    def response_ends(self) -> None:
        """Counts the end of this request, once: before its last bytes are written (so that its client
        cannot start another request that would seem to overlap it), or when the handler returns."""
        if self.in_progress is not None:
            self.server.end(self.in_progress)
            self.in_progress = None

    def serve_host(self, host: str, config: HostConfig, path: str, query: dict[str, str]) -> None:
        """What the host's configuration changes: robots.txt, the throttle, the delay; then the routes."""
        robots = path == "/robots.txt"
        admitted = robots or config.throttle is None or self.server.admit(host, config.throttle)
        if config.delay:
            time.sleep(config.delay)
        if robots:
            self.robots_txt(config.robots)
        elif not admitted:
            retry_after = {"Retry-After": str(config.throttle.retry_after)}
            self.send(429, b"too many requests", "text/plain", retry_after)
        else:
            self.route(path, query, headers={})

    def robots_txt(self, robots: tuple[int, bytes | str] | str | None) -> None:
        if robots is None:
            self.send(404, b"not found", "text/plain", {})
        elif isinstance(robots, str):
            getattr(self, f"robots_{robots}")()
        else:
            status, body = robots
            self.send(status, body.encode() if isinstance(body, str) else body, "text/plain", {})

    def robots_stall(self) -> None:
        self.start_body(len(ROBOTS_RULES), {}, content_type="text/plain")
        self.wfile.flush()
        time.sleep(self.server.max_stall)

    def robots_drip(self) -> None:
        self.start_body(None, {}, content_type="text/plain")
        deadline = time.monotonic() + self.server.max_stall
        for byte in itertools.cycle(ROBOTS_RULES):
            if time.monotonic() >= deadline:
                break
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(1)

    def robots_huge(self) -> None:
        body = memoryview(huge_robots())
        self.start_body(len(body), {}, content_type="text/plain")
        self.connection.settimeout(self.server.max_stall)  # a client that stops reading: give up then
        for start in range(0, len(body), 1 << 16):
            self.wfile.write(body[start : start + (1 << 16)])

    def route(self, path: str, query: dict[str, str], headers: dict[str, str]) -> None:
        parts = path.strip("/").split("/")
        head, rest = parts[0], "/" + "/".join(parts[2:])
        simple: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            "html": lambda: (200, b"<html><body>not an image</body></html>", "image/jpeg"),
            "text": lambda: (200, b"just some text", "text/plain"),
            "json": lambda: (200, b'{"AccessKeyId": "ASIA-TEST", "SecretAccessKey": "secret"}', "application/json"),
            "empty": lambda: (200, b"", "image/jpeg"),
            "exif.jpg": lambda: (200, with_exif(make_image(32, 32, "jpg")), "image/jpeg"),
            "cmyk.jpg": lambda: (200, cmyk_jpg(), "image/jpeg"),
            "bomb.png": lambda: (200, bomb_png(), "image/png"),
            "bomb.jpg": lambda: (200, bomb_jpg(), "image/jpeg"),
            "big.png": lambda: (200, big_png(), "image/png"),
            "truncated.jpg": lambda: (200, make_image(300, 200, "jpg")[:3000], "image/jpeg"),
            "corrupt.jpg": lambda: (200, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "image/jpeg"),
            "corrupt.png": lambda: (200, make_image(64, 64, "png")[:33] + bytes(range(256)) * 8, "image/png"),
        }
        qs = ("?" + urllib.parse.urlencode(query)) if query else ""
        if path in self.server.files:
            self.send(200, *self.server.files[path], headers)
        elif head in simple:
            self.send(*simple[head](), headers)
        elif head == "img" and len(parts) == 2:
            size, _, ext = parts[1].partition(".")
            width, height = (int(v) for v in size.split("x"))
            data = make_image(
                width, height, ext, query.get("alpha") == "1", query.get("gray") == "1", int(query.get("seed", 0))
            )
            self.send(200, data, {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[ext], headers)
        elif head == "slow":
            time.sleep(float(parts[1]))
            self.route(rest, query, headers)
        elif head == "status":
            extra = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            self.send(int(parts[1]), b"error page", "text/plain", {**headers, **extra})
        elif head == "flaky":
            name, failures = parts[1], int(parts[2])
            with self.server.lock:
                seen = self.server.flaky[name] = self.server.flaky.get(name, 0) + 1
            if seen <= failures:
                self.send(503, b"try later", "text/plain", headers)
            else:
                self.route("/" + "/".join(parts[3:]), query, headers)
        elif head == "redirect":
            n = int(parts[1])
            target = rest if n <= 1 else f"/redirect/{n - 1}{rest}"
            self.send(302, b"", "text/plain", {**headers, "Location": target + qs})
        elif head == "to":
            self.send(int(query.get("code", 302)), b"", "text/plain", {**headers, "Location": query["url"]})
        elif head == "bytes":
            self.send(200, b"\xab" * int(parts[1]), "application/octet-stream", headers)
        elif head == "unsized":
            self.start_body(None, headers)
            self.wfile.write(b"\xcd" * int(parts[1]))
        elif head == "loop":
            self.send(302, b"", "text/plain", {**headers, "Location": "/loop"})
        elif head == "robots":
            self.route(rest, query, {**headers, "X-Robots-Tag": urllib.parse.unquote(parts[1])})
        elif head == "tdm":
            self.route(rest, query, {**headers, "tdm-reservation": urllib.parse.unquote(parts[1])})
        elif head == "once":
            code, name = int(parts[1]), parts[2]
            with self.server.lock:
                first = name not in self.server.once
                self.server.once.add(name)
            if first:
                self.send(code, b"not this time", "text/plain", headers)
            else:
                self.route("/" + "/".join(parts[3:]), query, headers)
        elif head in ("stall", "drip", "drip-headers", "lying-length", "huge-declared", "endless"):
            getattr(self, head.replace("-", "_"))(headers)
        else:
            self.send(404, b"not found", "text/plain", headers)

    def send(self, code: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.response_ends()
        self.wfile.write(body)

    def start_body(self, length: int | None, headers: dict[str, str], content_type: str = "image/jpeg") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True

    def stall(self, headers: dict[str, str]) -> None:
        data = make_image(300, 200, "jpg")
        self.start_body(len(data), headers)
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        time.sleep(self.server.max_stall)

    def drip(self, headers: dict[str, str]) -> None:
        self.start_body(10_000, headers)
        for byte in make_image(300, 200, "jpg")[: int(self.server.max_stall)]:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(1)

    def drip_headers(self, headers: dict[str, str]) -> None:
        self.close_connection = True
        for char in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * int(self.server.max_stall):
            self.wfile.write(bytes([char]))
            self.wfile.flush()
            time.sleep(1)

    def lying_length(self, headers: dict[str, str]) -> None:
        self.start_body(20_000, headers)
        self.wfile.write(make_image(300, 200, "jpg")[:500])

    def huge_declared(self, headers: dict[str, str]) -> None:
        self.start_body(200 * 1024 * 1024, headers)
        self.wfile.write(b"\0" * 65536)

    def endless(self, headers: dict[str, str]) -> None:
        self.start_body(None, headers)
        chunk, deadline = b"\xff" * 65536, time.monotonic() + self.server.max_stall
        while time.monotonic() < deadline:
            self.wfile.write(chunk)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connecting at once (benchmarks) wait in the backlog, not in SYN retries

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_stall: float = MAX_STALL) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.max_stall = max_stall
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.user_agents: dict[str, str | None] = {}
        self.flaky: dict[str, int] = {}
        self.once: set[str] = set()
        self.files: dict[str, tuple[bytes, str]] = {}
        self.connections = 0
        self.host_config: dict[str, HostConfig] = {}
        self.host_stats: dict[str, HostStats] = {}
        self.windows: dict[str, deque[float]] = {}  # start times of the requests each throttle admitted

    def begin(self, host: str, path: str) -> HostConfig:
        """Counts a request's start on `host`; returns the host's configuration."""
        with self.lock:
            stats = self.host_stats.setdefault(host, HostStats())
            stats.requests += 1
            stats.active += 1
            stats.peak = max(stats.peak, stats.active)
            stats.paths.append(path)
            if stats.first_start is None:
                stats.first_start = time.monotonic()
            return self.host_config.get(host, HostConfig())

    def end(self, host: str) -> None:
        """Counts the end of a response on `host` (whatever ended it)."""
        with self.lock:
            stats = self.host_stats[host]
            stats.active -= 1
            stats.last_end = time.monotonic()

    def admit(self, host: str, throttle: Throttle) -> bool:
        """Whether `throttle` lets a request start now; a refusal is counted."""
        now = time.monotonic()
        with self.lock:
            window = self.windows.setdefault(host, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= throttle.rate:
                self.host_stats[host].throttled += 1
                return False
            window.append(now)
            return True

    def process_request(self, request, client_address) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (our fetcher cutting a late request, a pool closing) is routine here;
        anything else is printed as socketserver does."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class ImageServer:
    """Serves `Handler` on 127.0.0.1 from a background thread; use as a context manager.

    `tls`, a `trustme` certificate, serves https instead; `host` and `port` another address to listen on;
    `max_stall` how long the stalling and endless routes last (tests of their end use a short one).
    """

    def __init__(self, tls=None, host: str = "127.0.0.1", port: int = 0, max_stall: float = MAX_STALL) -> None:
        self.httpd = Server(host, port, max_stall)
        self.host = host
        self.scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.configure_cert(context)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def hits(self) -> dict[str, int]:
        return self.httpd.hits

    @property
    def connections(self) -> int:
        return self.httpd.connections

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def put(self, path: str, body: bytes, content_type: str = "image/jpeg") -> None:
        """Serve `body` at `path` (exactly, on every host), before any other route."""
        with self.httpd.lock:
            self.httpd.files[path] = (body, content_type)

    # --- virtual hosts: clients name them; the Host header tells them apart

    def host_url(self, host: str, path: str) -> str:
        """The url of `path` on virtual host `host` of this server (reach it with `resolve(host)`)."""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def resolve(self, *hosts: str) -> list[str]:
        """img2dataset-ng's `resolve` entries (curl's HOST:PORT:ADDRESS) that send `hosts` here."""
        address = f"[{self.host}]" if ":" in self.host else self.host
        return [f"{host}:{self.port}:{address}" for host in hosts]

    def configure_host(
        self,
        host: str,
        throttle: Throttle | None = None,
        robots: tuple[int, bytes | str] | str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Replaces the configuration of `host` (see the module docstring); takes effect at the next request."""
        if isinstance(robots, str) and robots not in ROBOTS_MISBEHAVIOURS:
            raise ValueError(f"robots must be (status, body) or one of {ROBOTS_MISBEHAVIOURS}; got {robots!r}")
        with self.httpd.lock:
            self.httpd.host_config[host.lower()] = HostConfig(throttle, robots, delay)

    def host_stats(self, host: str) -> HostStats:
        """A copy of what `host` saw so far (all zero for a host never seen)."""
        with self.httpd.lock:
            stats = self.httpd.host_stats.get(host.lower(), HostStats())
            return replace(stats, paths=list(stats.paths))

    def requests(self, host: str) -> int:
        return self.host_stats(host).requests

    def active(self, host: str) -> int:
        return self.host_stats(host).active

    def peak(self, host: str) -> int:
        return self.host_stats(host).peak

    def throttled(self, host: str) -> int:
        """429s the host's throttle sent."""
        return self.host_stats(host).throttled

    def host_log(self, host: str) -> list[str]:
        """The paths (query included) requested on `host`, in the order the requests started."""
        return self.host_stats(host).paths

    def seen_hosts(self) -> list[str]:
        with self.httpd.lock:
            return sorted(self.httpd.host_stats)

    def reset_counts(self) -> None:
        """Forget every host's counts and throttle windows; configurations stay."""
        with self.httpd.lock:
            for host, stats in self.httpd.host_stats.items():  # requests in flight still end: keep them
                self.httpd.host_stats[host] = HostStats(active=stats.active, peak=stats.active)
            self.httpd.windows.clear()

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # serve for manual runs: python tests/server.py
    with ImageServer() as server:
        print(server.base, flush=True)
        threading.Event().wait()
