"""A real HTTP server on 127.0.0.1 for the tests: generated images and fault-injection routes.

Every stalling or endless route stops by itself within `MAX_STALL` seconds, so no test leaves
traffic running. Routes (GET):

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
"""

from __future__ import annotations

import functools
import io
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        with self.server.lock:
            self.server.hits[parsed.path] = self.server.hits.get(parsed.path, 0) + 1
            self.server.user_agents[parsed.path] = self.headers.get("User-Agent")
        try:
            self.route(parsed.path, query, headers={})
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            self.close_connection = True

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
        if head in simple:
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
        self.wfile.write(body)

    def start_body(self, length: int | None, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
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
        time.sleep(MAX_STALL)

    def drip(self, headers: dict[str, str]) -> None:
        self.start_body(10_000, headers)
        for byte in make_image(300, 200, "jpg")[: int(MAX_STALL)]:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(1)

    def drip_headers(self, headers: dict[str, str]) -> None:
        self.close_connection = True
        for char in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * int(MAX_STALL):
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
        chunk, deadline = b"\xff" * 65536, time.monotonic() + MAX_STALL
        while time.monotonic() < deadline:
            self.wfile.write(chunk)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.user_agents: dict[str, str | None] = {}
        self.flaky: dict[str, int] = {}
        self.connections = 0

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

    `tls`, a `trustme` certificate, serves https instead; `host` and `port` another address to listen on.
    """

    def __init__(self, tls=None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.httpd = Server(host, port)
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
