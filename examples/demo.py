"""`make demo`: serve generated sample images on 127.0.0.1 and download them with the default distributor.

Needs no internet: the images are drawn here, served by a local HTTP server, and downloaded into
demo_output/ as webdataset shards with captions.
"""

from __future__ import annotations

import functools
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from img2dataset_ng import download

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "demo_images"
OUTPUT = ROOT / "demo_output"
SHAPES = ["circle", "square", "stripe"]


def draw(i: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A photo-sized picture of a few coloured shapes on a gradient, and its caption."""
    width, height = int(rng.integers(200, 1600)), int(rng.integers(200, 1200))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    img = np.stack([base[c] + 50 * np.sin((x * (c + 1) + y) / (width / 3)) for c in range(3)], -1).astype(np.uint8)
    shape = SHAPES[i % len(SHAPES)]
    for _ in range(int(rng.integers(2, 6))):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(20, 150))
        if shape == "circle":
            cv2.circle(img, (cx, cy), r, color, -1)
        elif shape == "square":
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        else:
            cv2.line(img, (0, cy), (width, cy + r), color, max(4, r // 4))
    return img, f"{shape}s on a {width}x{height} gradient"


def make_images(count: int = 60) -> list[tuple[str, str]]:
    """Writes the sample images (once) and returns (file name, caption) pairs."""
    IMAGES.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        img, caption = draw(i, rng)
        name = f"{i:03d}.{'png' if i % 10 == 9 else 'jpg'}"
        if not (IMAGES / name).exists():
            cv2.imwrite(str(IMAGES / name), img)
        samples.append((name, caption))
    return samples


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    samples = make_images()
    handler = functools.partial(QuietHandler, directory=str(IMAGES))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        url_list = IMAGES / "urls.csv"
        lines = ["url,caption"] + [f'{base}/{name},"{caption}"' for name, caption in samples]
        lines.append(f"{base}/missing.jpg,a url that fails with 404")
        url_list.write_text("\n".join(lines) + "\n")
        summary = download(
            str(url_list),
            input_format="csv",
            caption_col="caption",
            output_folder=str(OUTPUT),
            output_format="webdataset",
            number_sample_per_shard=20,
            processes_count=2,
            thread_count=16,
            incremental_mode="overwrite",
        )
        server.shutdown()
    url_list.unlink()
    print(
        f"\n{summary.successes} of {summary.count} images downloaded into {OUTPUT}/: "
        f"{', '.join(sorted(p.name for p in OUTPUT.iterdir())[:3])}, ..."
    )


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    main()
