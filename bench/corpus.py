"""Local corpora of images for benchmarks, made once under bench/.corpus/.

Two mixes (`--mix`), both of photo-like pictures (smooth shading, edges, texture and sensor noise) and
a few broken files:

- heavy (bench/.corpus/images/): 80% JPEG with a spread of sizes from thumbnails to 12 megapixels, PNG
  with and without alpha, WebP; 2000 images are 732 MiB. Large JPEGs dominate its decode time.
- web (bench/.corpus/web/): shaped like the images a crawl of the web gives: 82% JPEG, about 9% PNG,
  7% WebP and 2% GIF, median about 800 x 600, four in five under one megapixel.
"""

from __future__ import annotations

import argparse
import io
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

BENCH = Path(__file__).resolve().parent
CORPUS = BENCH / ".corpus" / "images"  # the heavy mix's folder


@dataclass(frozen=True)
class Mix:
    folder: Path
    sizes: list[tuple[tuple[int, int], float]]  # (longest side range, share)
    formats: list[tuple[str, float]]  # (extension, share)
    png_side: int  # PNGs are at most this on their longest side (large PNGs are rare on the web)


MIXES = {
    # thumbnails, web sizes, large photos, 12 MP originals
    "heavy": Mix(
        CORPUS,
        [((80, 300), 0.25), ((300, 1200), 0.5), ((1200, 2500), 0.2), ((2500, 4240), 0.05)],
        [("jpg", 0.80), ("png", 0.12), ("webp", 0.08)],
        1600,
    ),
    # thumbnails, most web images (800 x 600 in the middle), large ones, a few originals
    "web": Mix(
        BENCH / ".corpus" / "web",
        [((100, 400), 0.22), ((400, 1150), 0.58), ((1150, 2000), 0.15), ((2000, 4000), 0.05)],
        [("jpg", 0.82), ("png", 0.09), ("webp", 0.07), ("gif", 0.02)],
        1200,
    ),
}


def corpus_folder(mix: str) -> Path:
    return MIXES[mix].folder


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


def make_one(index: int, seed: int = 0, mix: str = "heavy") -> str:
    """Writes image `index` of the `mix` corpus (unless it exists) and returns its file name."""
    spec = MIXES[mix]
    rng = np.random.default_rng([seed, index])
    (low, high), _ = spec.sizes[rng.choice(len(spec.sizes), p=[share for _, share in spec.sizes])]
    longest = int(rng.integers(low, high))
    ratio = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3]))
    width, height = (longest, max(16, int(longest / ratio))) if ratio >= 1 else (max(16, int(longest * ratio)), longest)
    kind = rng.random()
    bounds = np.cumsum([share for _, share in spec.formats])
    extension = spec.formats[min(int(np.searchsorted(bounds, kind, side="right")), len(bounds) - 1)][0]
    path = spec.folder / f"{index:06d}.{extension}"
    if path.exists():
        return path.name
    if kind < 0.005:
        data = b"\xff\xd8\xff\xe0" + rng.bytes(2000)  # broken
    elif extension == "jpg":
        _, data = cv2.imencode(".jpg", photo(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 95))])
    elif extension == "png":
        img = photo(rng, min(width, spec.png_side), min(height, spec.png_side))
        if rng.random() < 0.5:
            alpha = np.full(img.shape[:2] + (1,), 255, np.uint8)
            alpha[: img.shape[0] // 3] = 0
            img = np.concatenate([img, alpha], -1)
        _, data = cv2.imencode(".png", img)
    elif extension == "gif":  # OpenCV writes no GIF: Pillow, 256 colours as on the web
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(photo(rng, min(width, 800), min(height, 800))[:, :, ::-1]).quantize(256).save(buffer, "GIF")
        data = buffer.getvalue()
    else:
        _, data = cv2.imencode(".webp", photo(rng, width, height), [cv2.IMWRITE_WEBP_QUALITY, 80])
    path.write_bytes(bytes(data))
    return path.name


def make_corpus(count: int, mix: str = "heavy") -> list[str]:
    """Writes the `mix` corpus (on all cores, skipping files already there) and returns the file names."""
    folder = MIXES[mix].folder
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.exists() and len(names := json.loads(manifest.read_text())) == count:
        return names
    for stale in folder.glob("*.*"):  # another count or generator: start over
        stale.unlink()
    with ProcessPoolExecutor() as pool:
        names = list(pool.map(partial(make_one, mix=mix), range(count), chunksize=16))
    manifest.write_text(json.dumps(names))
    return names


def describe(names: list[str], mix: str) -> str:
    """Files, bytes, formats and the median size of the pixels, for the record."""
    folder = MIXES[mix].folder
    sizes = [(folder / name).stat().st_size for name in names]
    formats = {ext: sum(name.endswith(ext) for name in names) / len(names) for ext in ("jpg", "png", "webp", "gif")}
    shapes = []
    for name in names:
        header = cv2.imread(str(folder / name), cv2.IMREAD_REDUCED_GRAYSCALE_8) if not name.endswith("gif") else None
        if header is not None:
            shapes.append(header.shape[0] * header.shape[1] * 64)
    megapixels = np.asarray(shapes) / 1e6
    return (
        f"{len(names)} files, {sum(sizes) / 2**20:.0f} MiB ({np.mean(sizes) / 1e3:.0f} KB on average) in {folder}; "
        + ", ".join(f"{ext} {share:.0%}" for ext, share in formats.items())
        + f"; median {np.median(megapixels):.2f} MP, {np.mean(megapixels < 1):.0%} under 1 MP (GIF left out)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--mix", choices=MIXES, default="heavy")
    args = parser.parse_args()
    print(describe(make_corpus(args.count, args.mix), args.mix))
