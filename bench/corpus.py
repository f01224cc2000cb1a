"""A local corpus of web-like images for benchmarks, made once under bench/.corpus/images/.

Mostly JPEG photos-like pictures (smooth shading, edges, texture and sensor noise) with a spread of
sizes from thumbnails to 12 megapixels, some PNG with and without alpha, some WebP, and a few broken
files, in the proportions a crawl of the web gives roughly.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

BENCH = Path(__file__).resolve().parent
CORPUS = BENCH / ".corpus" / "images"
# (longest side range, share): thumbnails, web sizes, large photos, 12 MP originals
SIZES = [((80, 300), 0.25), ((300, 1200), 0.5), ((1200, 2500), 0.2), ((2500, 4240), 0.05)]


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like picture: shaded shapes at a few scales, texture and noise, made cheaply at low resolution."""
    small_w, small_h = max(8, width // 8), max(8, height // 8)
    base = rng.uniform(30, 220, 3)
    y, x = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    img = np.stack(
        [base[c] + 60 * np.sin(x / small_w * rng.uniform(1, 6) + y / small_h * rng.uniform(1, 6)) for c in range(3)], -1
    )
    for _ in range(int(rng.integers(3, 12))):
        center = (int(rng.integers(0, small_w)), int(rng.integers(0, small_h)))
        axes = (int(rng.integers(2, small_w // 2 + 3)), int(rng.integers(2, small_h // 2 + 3)))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, (height, width, 1)).astype(np.float32)  # sensor-like noise
    return np.clip(img, 0, 255).astype(np.uint8)


def make_one(index: int, seed: int = 0) -> str:
    """Writes image `index` of the corpus (unless it exists) and returns its file name."""
    rng = np.random.default_rng([seed, index])
    (low, high), _ = SIZES[rng.choice(len(SIZES), p=[share for _, share in SIZES])]
    longest = int(rng.integers(low, high))
    ratio = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3]))
    width, height = (longest, max(16, int(longest / ratio))) if ratio >= 1 else (max(16, int(longest * ratio)), longest)
    kind = rng.random()
    extension = "jpg" if kind < 0.80 else "png" if kind < 0.92 else "webp"
    path = CORPUS / f"{index:06d}.{extension}"
    if path.exists():
        return path.name
    if kind < 0.005:
        data = b"\xff\xd8\xff\xe0" + rng.bytes(2000)  # broken
    elif extension == "jpg":
        _, data = cv2.imencode(".jpg", photo(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 95))])
    elif extension == "png":
        img = photo(rng, min(width, 1600), min(height, 1600))
        if rng.random() < 0.5:
            alpha = np.full(img.shape[:2] + (1,), 255, np.uint8)
            alpha[: img.shape[0] // 3] = 0
            img = np.concatenate([img, alpha], -1)
        _, data = cv2.imencode(".png", img)
    else:
        _, data = cv2.imencode(".webp", photo(rng, width, height), [cv2.IMWRITE_WEBP_QUALITY, 80])
    path.write_bytes(bytes(data))
    return path.name


def make_corpus(count: int) -> list[str]:
    """Writes the corpus (on all cores, skipping files already there) and returns the file names."""
    CORPUS.mkdir(parents=True, exist_ok=True)
    manifest = CORPUS / "manifest.json"
    if manifest.exists() and len(names := json.loads(manifest.read_text())) == count:
        return names
    for stale in CORPUS.glob("*.*"):  # another count or generator: start over
        stale.unlink()
    with ProcessPoolExecutor() as pool:
        names = list(pool.map(make_one, range(count), chunksize=16))
    manifest.write_text(json.dumps(names))
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    names = make_corpus(args.count)
    size = sum((CORPUS / n).stat().st_size for n in names)
    print(f"{len(names)} files, {size / 2**20:.0f} MiB in {CORPUS}")
