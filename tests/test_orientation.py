"""apply_exif_orientation: images tagged with each of the 8 EXIF orientations are stored upright.

The fixtures are made with PIL, independently of our code: an upright photo-like image is turned by the
inverse of what `PIL.ImageOps.exif_transpose` does for the orientation, and saved with that orientation
tag (checked: exif_transpose of the file gives the upright image back). By default (img2dataset 1.47's
behaviour) the tag is ignored: the stored image is exactly what the same pixels without the tag give.
"""

from __future__ import annotations

import functools
import io
import struct
import urllib.parse

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from img2dataset_ng import download
from img2dataset_ng.config import Config
from img2dataset_ng.stages.imageinfo import probe
from img2dataset_ng.stages.resize import Resizer, exif_orientation, upright
from tests.outputs import read_metadata, tar_samples, write_url_list
from tests.test_quality import photo

ORIENTATIONS = range(1, 9)
# what PIL's exif_transpose does to show an image of each orientation upright, and its inverse
SHOW = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {**SHOW, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
SMALL, LARGE = (640, 400), (2600, 1800)  # the large one (4.7 MP) is decoded at reduced scale
SIZE = 256
CLOSE, FAR = 8, 20  # mean absolute difference, 0-255


@functools.cache
def upright_photo(width: int, height: int) -> np.ndarray:
    """BGR, with a bright block near the top left corner so that no flip or turn of it looks the same."""
    img = photo(width, height, seed=width)
    img[height // 10 : height // 4, width // 12 : width // 4] = (250, 250, 250)
    return img


@functools.cache
def stored_as(size: tuple[int, int], orientation: int, fmt: str = "JPEG", tagged: bool = True) -> bytes:
    """The upright photo of `size` as a file whose pixels are laid out for `orientation`, tagged with it."""
    image = Image.fromarray(cv2.cvtColor(upright_photo(*size), cv2.COLOR_BGR2RGB))
    if orientation != 1:
        image = image.transpose(INVERSE[orientation])
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if tagged:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def keep_ratio(img: np.ndarray) -> np.ndarray:
    """The straightforward keep_ratio resize: the smaller side becomes SIZE, area interpolation."""
    height, width = img.shape[:2]
    scale = SIZE / min(width, height)
    target = (SIZE if width <= height else round(width * scale), SIZE if height <= width else round(height * scale))
    return cv2.resize(img, target, interpolation=cv2.INTER_AREA)


EXTENSIONS = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"), "WEBP": ("webp", "image/webp")}
# (name, size, orientation, format): JPEGs of every orientation, small and large; a PNG and a WebP too
CASES = [
    *((name, size, o, "JPEG") for name, size in (("small", SMALL), ("large", LARGE)) for o in ORIENTATIONS),
    ("small", SMALL, 6, "PNG"),
    ("small", SMALL, 6, "WEBP"),
]


def serve(server, prefix: str, cases=CASES, tagged: bool = True) -> dict[str, tuple]:
    """Serve the cases' files under /prefix/; {url path: (file bytes, size, orientation)}."""
    served = {}
    for name, size, orientation, fmt in cases:
        extension, content_type = EXTENSIONS[fmt]
        path = f"/{prefix}/{name}-{orientation}.{extension}"
        body = stored_as(size, orientation, fmt, tagged)
        server.put(path, body, content_type)
        served[path] = (body, size, orientation)
    return served


def run(tmp_path, server, paths, name: str, **options) -> tuple[dict[str, dict], dict[str, bytes]]:
    """Download `paths` of the test server: metadata rows and stored images, by url path."""
    url_list = write_url_list([{"url": server.url(p)} for p in paths], tmp_path / f"{name}.txt", "txt")
    output = tmp_path / name
    download(str(url_list), output_folder=str(output), output_format="webdataset", thread_count=4, **options)
    rows = {row["key"]: row for row in read_metadata(output).to_pylist()}
    assert all(row["status"] == "success" for row in rows.values()), [r["error_message"] for r in rows.values()]
    _, samples = tar_samples(output / "00000.tar")
    path = {key: urllib.parse.urlsplit(row["url"]).path for key, row in rows.items()}
    return {path[k]: row for k, row in rows.items()}, {path[k]: members["jpg"] for k, members in samples.items()}


# --- the fixtures and the two functions ---------------------------------------------------------


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_fixtures_are_upright_for_pil_and_upright_agrees_with_it(orientation):
    data = stored_as(SMALL, orientation, "PNG")  # lossless: the comparison with PIL is exact
    shown = cv2.cvtColor(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))), cv2.COLOR_RGB2BGR)
    assert np.array_equal(shown, upright_photo(*SMALL))
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # IMREAD_UNCHANGED ignores the tag
    assert np.array_equal(upright(raw, orientation), shown)
    for fmt in ("JPEG", "PNG", "WEBP"):
        assert exif_orientation(stored_as(SMALL, orientation, fmt)) == orientation, fmt
        assert exif_orientation(stored_as(SMALL, orientation, fmt, tagged=False)) == 1, fmt


def jpeg_with_tiff(tiff: bytes) -> bytes:
    plain = stored_as(SMALL, 1, tagged=False)
    payload = b"Exif\0\0" + tiff
    return plain[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain[2:]


@pytest.mark.parametrize(
    "tiff, expected",
    [
        (b"MM\0*" + struct.pack(">IHHHIHHI", 8, 1, 0x0112, 3, 1, 6, 0, 0), 6),  # big-endian
        (b"II*\0" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, 8, 0, 0), 8),
        (b"II*\0" + struct.pack("<IHHHIII", 8, 1, 0x0112, 4, 1, 3, 0), 3),  # as a LONG
        (b"II*\0" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, 9, 0, 0), 1),  # out of range
        (b"II*\0" + struct.pack("<IHHHIHHI", 8, 1, 0x010F, 3, 1, 6, 0, 0), 1),  # another tag
        (b"II*\0" + struct.pack("<IH", 8, 5000), 1),  # more entries declared than there are bytes
        (b"II*\0" + struct.pack("<I", 4000), 1),  # the first IFD past the end
        (b"XX*\0" + struct.pack("<I", 8), 1),
    ],
)
def test_orientation_is_read_from_the_first_ifd_within_bounds(tiff, expected):
    assert exif_orientation(jpeg_with_tiff(tiff)) == expected


def test_the_large_photo_takes_the_reduced_decode():
    config = Config.from_options(url_list="x", resize_mode="keep_ratio", apply_exif_orientation=True)
    assert Resizer(config.resize).plan(probe(stored_as(LARGE, 1))).reduction > 1


# --- downloads ---------------------------------------------------------------------------------


def test_every_orientation_is_stored_upright(tmp_path, server):
    files = serve(server, "upright")
    rows, images = run(tmp_path, server, files, "upright", resize_mode="keep_ratio", apply_exif_orientation=True)
    for path, (_, size, _) in files.items():
        expected = keep_ratio(upright_photo(*size))
        stored = decoded(images[path])
        row = rows[path]
        assert (row["original_width"], row["original_height"]) == size, path  # the upright original
        assert (row["width"], row["height"]) == (stored.shape[1], stored.shape[0]) == (expected.shape[1], SIZE)
        assert mad(stored, expected) < CLOSE, (path, mad(stored, expected))
        for other in (cv2.flip(expected, 0), cv2.flip(expected, 1), cv2.flip(expected, -1)):
            assert mad(stored, other) > FAR, path  # the other orientations of the same shape are far
        assert exif_orientation(images[path]) == 1


def test_by_default_the_orientation_is_ignored(tmp_path, server):
    tagged = serve(server, "ignored")
    untagged = serve(server, "untagged", tagged=False)
    rows, images = run(tmp_path, server, [*tagged, *untagged], "ignored", resize_mode="keep_ratio")
    applied_rows, applied = run(
        tmp_path, server, tagged, "applied", resize_mode="keep_ratio", apply_exif_orientation=True
    )
    for path, (body, _, orientation) in tagged.items():
        assert images[path] == images[path.replace("/ignored/", "/untagged/")], path  # the tag changes nothing
        raw = decoded(body)
        assert (rows[path]["original_width"], rows[path]["original_height"]) == (raw.shape[1], raw.shape[0])
        assert mad(decoded(images[path]), keep_ratio(raw)) < CLOSE
        if orientation == 1:  # already upright: the option changes nothing
            assert applied[path] == images[path] and applied_rows[path]["width"] == rows[path]["width"]
        else:
            assert applied[path] != images[path]


def test_resize_mode_no_re_encodes_what_is_not_upright(tmp_path, server):
    small_jpegs = [case for case in CASES if case[0] == "small" and case[3] == "JPEG"]
    files = serve(server, "no", small_jpegs)
    options = {"resize_mode": "no", "skip_reencode": True, "apply_exif_orientation": True}
    rows, images = run(tmp_path, server, files, "no", **options)
    expected = upright_photo(*SMALL)
    for path, (downloaded, _, orientation) in files.items():
        stored = decoded(images[path])
        assert (rows[path]["width"], rows[path]["height"]) == SMALL == (stored.shape[1], stored.shape[0])
        assert mad(stored, expected) < CLOSE, (path, mad(stored, expected))
        if orientation == 1:
            assert images[path] == downloaded  # upright already: kept as downloaded (skip_reencode)
        else:
            assert images[path] != downloaded and exif_orientation(images[path]) == 1
