"""Per format, one thread, bytes already in memory: milliseconds per image of OpenCV's decoder (the path
before stages/decoders.py) and of each candidate decoder, with the PSNR of what they give against a full
decode and area resize; "(kept)" marks the decoder the resizer uses for the format.

Candidates are timed interleaved (each on an image, then the next image), by the CPU time of the process.
Every path is the same but for its decoder: decode (at reduced scale where the decoder can) -> the
resizer's `_fit` (halvings + bilinear to keep_ratio 256, skipped when the decoder scaled) -> JPEG quality 95
with OpenCV. "resizer" is the whole `Resizer` call (header checks, EXIF and all) for reference.

    .venv/bin/python bench/codecs.py --mix web --per-format 150
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import corpus_folder  # noqa: E402
from img2dataset_ng.config import Config  # noqa: E402
from img2dataset_ng.stages.resize import REDUCED_JPEG, Resizer, decode, inspect  # noqa: E402

cv2.setNumThreads(1)
SIZE = 256


def bgr(img: np.ndarray, order: str = "bgr") -> np.ndarray:
    """3 or 4 channels in OpenCV's order from a candidate's gray, RGB or RGBA."""
    if img.ndim == 2 or img.shape[2] <= 2:  # gray, or gray and alpha: the gray
        return cv2.cvtColor(img if img.ndim == 2 else img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if order == "rgb":
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    return img


def opencv(data: bytes, info, target, resizer: Resizer) -> np.ndarray:
    """OpenCV's imdecode, a JPEG at 1/2, 1/4 or 1/8 scale where it stays at least the target."""
    reduction = resizer._reduction(info, target)
    flags = REDUCED_JPEG[reduction] | cv2.IMREAD_IGNORE_ORIENTATION if reduction > 1 else cv2.IMREAD_UNCHANGED
    return bgr(cv2.imdecode(np.frombuffer(data, np.uint8), flags))


def kept(data: bytes, info, target, resizer: Resizer) -> np.ndarray:
    """The resizer's decoder for the format (stages/decoders.py where it applies, else OpenCV)."""
    return resizer.decode(data, resizer.plan(info))


def simplejpeg_decoder(fast: bool) -> Callable:
    import simplejpeg

    def run(data: bytes, info, target, resizer: Resizer) -> np.ndarray:
        return simplejpeg.decode_jpeg(
            data, "BGR", fastdct=fast, fastupsample=fast, min_width=target[0], min_height=target[1]
        )

    return run


def vips_decoder(data: bytes, info, target, resizer: Resizer) -> np.ndarray:
    """libvips' loader, shrinking on load where the format can (JPEG by 2/4/8, WebP by any scale)."""
    import pyvips

    options = {}
    if info.format == "webp":
        options["scale"] = max(target[0] / info.width, target[1] / info.height)
    elif info.format == "jpg":
        options["shrink"] = resizer._reduction(info, target)
    image = pyvips.Image.new_from_buffer(data, "", access="sequential", **options)
    return bgr(
        np.ndarray(buffer=image.write_to_memory(), dtype=np.uint8, shape=[image.height, image.width, image.bands]),
        "rgb",
    )


CANDIDATES: dict[str, dict[str, Callable]] = {
    "jpg": {
        "opencv (kept)": opencv,
        "simplejpeg eighths": simplejpeg_decoder(False),
        "simplejpeg eighths fast": simplejpeg_decoder(True),
        "pyvips shrink-on-load": vips_decoder,
    },
    "png": {"opencv": opencv, "pyspng (kept: 8-bit RGB, RGBA)": kept, "pyvips": vips_decoder},
    "webp": {"opencv": opencv, "libwebp scaled (kept: downscales)": kept, "pyvips scale-on-load": vips_decoder},
    "gif": {"opencv (kept)": opencv, "pyvips": vips_decoder},
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def path(decoder: Callable, data: bytes, resizer: Resizer) -> np.ndarray:
    info = inspect(data)
    target = resizer._target_size(info.width, info.height)
    img = decoder(data, info, target, resizer)
    img = resizer._fit(img, target, upscale=target[0] > info.width)
    ok, encoded = cv2.imencode(".jpg", img, resizer.encode_params)
    return img


def reference(data: bytes, resizer: Resizer) -> np.ndarray:
    info = inspect(data)
    target = resizer._target_size(info.width, info.height)
    return cv2.resize(decode(data), target, interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", default="web")
    parser.add_argument("--per-format", type=int, default=150, help="images of each format (at most)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the images; the median pass counts")
    args = parser.parse_args()
    resizer = Resizer(Config.from_options(url_list="x", image_size=SIZE, resize_mode="keep_ratio").resize)
    by_format: dict[str, list[bytes]] = {}
    for file in sorted(corpus_folder(args.mix).iterdir()):
        data = file.read_bytes()
        try:
            info = inspect(data)
            if resizer._target_size(info.width, info.height) is None:
                continue
            reference(data, resizer)
        except Exception:  # noqa: BLE001 - the corpus's broken files
            continue
        if len(by_format.setdefault(info.format, [])) < args.per_format:
            by_format[info.format].append(data)
    print("| format | images | path | ms / image | vs OpenCV | min PSNR dB | mean PSNR dB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for fmt, images in by_format.items():
        references = [reference(data, resizer) for data in images]
        runs = {"resizer (whole call)": lambda data: resizer(data)}
        for name, decoder in CANDIDATES.get(fmt, {}).items():
            runs[name] = lambda data, d=decoder: path(d, data, resizer)
        quality, failed = {}, {}
        for name, run in list(runs.items()):
            try:
                outs = [run(data) for data in images]  # warm, and the PSNR
            except Exception as error:  # noqa: BLE001 - a candidate that cannot read this format
                failed[name] = f"{type(error).__name__}: {error}"
                del runs[name]
                continue
            if isinstance(outs[0], np.ndarray):
                values = [
                    psnr(bgr(o)[:, :, :3], r[:, :, :3] if r.ndim == 3 else bgr(r)) for o, r in zip(outs, references)
                ]
                quality[name] = f"{min(values):.1f} | {statistics.mean(min(v, 99) for v in values):.1f}"
        # interleaved: every candidate on an image, then the next image, so that the machine's drift over a
        # pass (frequency, caches, other processes) falls on all of them alike
        seconds = {name: [0.0] * args.rounds for name in runs}
        for round_ in range(args.rounds):
            for data in images:
                for name, run in runs.items():
                    start = time.process_time()  # libvips decodes on threads of its own
                    run(data)
                    seconds[name][round_] += time.process_time() - start
        base = next((statistics.median(seconds[name]) for name in seconds if name.startswith("opencv")), None)
        for name in [*runs, *failed]:
            if name in failed:
                print(f"| {fmt} | {len(images)} | {name} | failed: {failed[name]} | | | |")
                continue
            total = statistics.median(seconds[name])
            ratio = f"{total / base:.2f}" if base else ""
            ms = total / len(images) * 1000
            print(f"| {fmt} | {len(images)} | {name} | {ms:.2f} | {ratio} | {quality.get(name, ' | ')} |")


if __name__ == "__main__":
    main()
