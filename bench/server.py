"""nginx on 127.0.0.1 serving a folder, started and stopped by the benchmark (almost no CPU per request)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONFIG = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ image/jpeg jpg; image/png png; image/webp webp; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class Nginx:
    def __init__(self, root: Path):
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise RuntimeError("nginx is missing: apt-get install -y nginx-light (make bench installs it)")
        self.root = root
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-bench-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        conf = self.prefix / "nginx.conf"
        conf.write_text(CONFIG.format(prefix=self.prefix, port=self.port, root=self.root))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf)])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


class DelayProxy:
    """A relay in front of `port` that holds every request `delay` seconds before passing it on (the
    latency mode: concurrency, not CPU, is then the limit). With no delay it is not started at all."""

    def __init__(self, port: int, delay: float):
        self.upstream, self.delay = port, delay
        self.port = port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DelayProxy:
        if self.delay > 0:
            import asyncio
            import threading

            self.loop = asyncio.new_event_loop()
            ready = threading.Event()

            async def serve() -> None:
                self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0, backlog=4096)
                self.port = self.server.sockets[0].getsockname()[1]
                ready.set()
                await self.server.serve_forever()

            self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
            self.thread.start()
            ready.wait(10)
        return self

    async def _relay(self, client_reader, client_writer) -> None:
        import asyncio

        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_writer.close()
            return

        async def requests() -> None:  # client -> nginx, each request held back
            while data := await client_reader.read(65536):
                await asyncio.sleep(self.delay)
                upstream_writer.write(data)
                await upstream_writer.drain()
            upstream_writer.close()

        async def responses() -> None:  # nginx -> client, as it comes
            while data := await upstream_reader.read(1 << 20):
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        try:
            await asyncio.gather(requests(), responses())
        except (ConnectionError, OSError):
            client_writer.close()
            upstream_writer.close()

    def __exit__(self, *exc) -> None:
        if self.delay > 0:
            self.loop.call_soon_threadsafe(self.server.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
