"""A real HTTP server on 127.0.0.1 for the tests: generated images and fault routes.

Routes (all GET):
- `/img/{w}x{h}.{jpg|png|webp}`: a generated image; `?alpha=1` adds transparency (png/webp),
  `?gray=1` makes it grayscale; `?seed=N` changes its content.
- `/slow/{seconds}/...`: the rest of the path, after a delay.
- `/status/{code}`: that HTTP status with a short body.
- `/redirect/{n}/...`: n redirects, then the rest of the path.
- `/robots/{header value}/...`: the rest of the path with that X-Robots-Tag header.
- `/html`: an HTML page served as image/jpeg.
- `/corrupt.jpg`: JPEG magic followed by garbage.
- `/exif.jpg`: a JPEG with an EXIF block (Image Make = TestCam).
"""

from __future__ import annotations

import functools
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        self.server.hits[parsed.path] = self.server.hits.get(parsed.path, 0) + 1
        self.route(parsed.path, query, headers={})

    def route(self, path: str, query: dict[str, str], headers: dict[str, str]) -> None:
        parts = path.strip("/").split("/")
        head = parts[0]
        qs = ("?" + urllib.parse.urlencode(query)) if query else ""
        if head == "img" and len(parts) == 2:
            size, _, ext = parts[1].partition(".")
            width, height = (int(v) for v in size.split("x"))
            data = make_image(
                width, height, ext, query.get("alpha") == "1", query.get("gray") == "1", int(query.get("seed", 0))
            )
            content_type = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[ext]
            self.send(200, data, content_type, headers)
        elif head == "slow":
            time.sleep(float(parts[1]))
            self.route("/" + "/".join(parts[2:]), query, headers)
        elif head == "status":
            self.send(int(parts[1]), b"error page", "text/plain", headers)
        elif head == "redirect":
            n = int(parts[1])
            target = "/" + "/".join(parts[2:]) if n <= 1 else f"/redirect/{n - 1}/" + "/".join(parts[2:])
            self.send(302, b"", "text/plain", {**headers, "Location": target + qs})
        elif head == "robots":
            self.route("/" + "/".join(parts[2:]), query, {**headers, "X-Robots-Tag": urllib.parse.unquote(parts[1])})
        elif head == "html":
            self.send(200, b"<html><body>not an image</body></html>", "image/jpeg", headers)
        elif head == "exif.jpg":
            self.send(200, with_exif(make_image(32, 32, "jpg")), "image/jpeg", headers)
        elif head == "corrupt.jpg":
            self.send(200, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "image/jpeg", headers)
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


class ImageServer:
    """Serves `Handler` on 127.0.0.1 from a background thread; use as a context manager."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.hits = {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def hits(self) -> dict[str, int]:
        return self.httpd.hits

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
