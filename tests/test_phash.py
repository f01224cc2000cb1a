"""compute_phash: the `phash` column is imagehash's perceptual hash of the stored image.

`imagehash.phash(PIL.Image.open(stored))` is the reference, computed here from the stored files. Given
the same pixels our hash is imagehash's bit for bit; from a download it may differ by the stored
format's encoding loss (the hash is of the pixels encoded, not decoded again): at most 4 bits.
"""

from __future__ import annotations

import io
import itertools
import json

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from img2dataset_ng import ConfigError, download
from img2dataset_ng.config import Config
from img2dataset_ng.options import IncrementalMode
from img2dataset_ng.provenance import check
from img2dataset_ng.sample import Sample
from img2dataset_ng.stages import phash as phash_module
from img2dataset_ng.stages.phash import PHash, from_hex, hamming, phash, to_hex
from img2dataset_ng.stages.pipeline import download_stages
from img2dataset_ng.stages.resize import Resize
from img2dataset_ng.storage import Folder
from tests.outputs import read_metadata, tar_samples, write_url_list
from tests.test_quality import photo

imagehash = pytest.importorskip("imagehash")

MAX_DISTANCE = 4  # bits, between our hash and imagehash's of the stored file


def reference(image_bytes: bytes) -> str:
    return str(imagehash.phash(Image.open(io.BytesIO(image_bytes))))


def encode(pixels: np.ndarray, ext: str, **params: int) -> bytes:
    flags = {
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, params.get("quality", 90)],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 1],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, params.get("quality", 90)],
    }[ext]
    ok, data = cv2.imencode("." + ext, pixels, flags)
    assert ok
    return data.tobytes()


def with_alpha(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    alpha = np.tile(np.linspace(40, 255, width, dtype=np.float32), (height, 1)).astype(np.uint8)
    return np.dstack([pixels, alpha])


# (name, width, height, format, seed): photo-like content of several sizes and formats
CORPUS = [
    ("a.jpg", 640, 480, "jpg", 1),
    ("b.png", 300, 500, "png", 2),
    ("c.webp", 512, 512, "webp", 3),
    ("d.jpg", 1600, 1200, "jpg", 4),
    ("e.jpg", 3000, 2000, "jpg", 5),  # 6 MP: decoded at reduced scale
    ("f.png", 100, 60, "png", 6),  # upscaled
    ("g.webp", 900, 300, "webp", 7),
    ("h.jpg", 256, 256, "jpg", 8),  # already the target size
    ("i.png", 420, 380, "png", 9),  # transparent
    ("j.jpg", 720, 1280, "jpg", 10),
    ("k.jpg", 480, 480, "gray", 11),  # a grayscale JPEG
]


def corpus_bytes(name: str, width: int, height: int, kind: str, seed: int) -> bytes:
    pixels = photo(width, height, seed)
    if name == "i.png":
        pixels = with_alpha(pixels)
    if kind == "gray":
        return encode(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), "jpg")
    return encode(pixels, kind)


@pytest.fixture(scope="module")
def corpus_urls(server):
    urls = []
    for name, width, height, kind, seed in CORPUS:
        server.put(f"/phash/{name}", corpus_bytes(name, width, height, kind, seed), "image/" + name.rsplit(".")[-1])
        urls.append(server.url(f"/phash/{name}"))
    return urls


# --- the hash itself, on pixels ---------------------------------------------------------------


@pytest.mark.parametrize(
    "width, height, channels",
    [
        (640, 480, 3),
        (31, 17, 3),
        (32, 32, 3),
        (33, 200, 3),
        (256, 256, 3),
        (1000, 700, 3),
        (300, 200, 1),
        (400, 300, 4),
    ],
)
def test_same_pixels_give_imagehash_bit_for_bit(width, height, channels):
    for seed in range(3):
        bgr = photo(width, height, seed + width)
        if channels == 1:
            pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            pil = Image.fromarray(pixels)
        elif channels == 4:
            pixels = with_alpha(bgr)
            pil = Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA))
        else:
            pixels, pil = bgr, Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        ours = to_hex(phash(pixels))
        assert ours == str(imagehash.phash(pil)), (width, height, channels, seed)


def test_hex_round_trip_and_hamming():
    value = phash(photo(300, 200, 1))
    text = to_hex(value)
    assert len(text) == 16 and text == text.lower() and int(text, 16) == value
    assert from_hex(text) == value and from_hex(text.upper()) == value
    assert to_hex(0) == "0" * 16 and to_hex(2**64 - 1) == "f" * 16
    assert hamming(value, value) == 0 and hamming(0, 2**64 - 1) == 64 and hamming(0b1011, 0b0001) == 2
    for bad in ["", "123", "g" * 16, "0" * 17]:
        with pytest.raises(ValueError, match="16 hex digits"):
            from_hex(bad)


def test_a_resized_copy_is_near_and_another_image_is_far():
    original = photo(800, 600, 42)
    smaller = cv2.resize(original, (400, 300), interpolation=cv2.INTER_AREA)
    other = photo(800, 600, 43)
    assert hamming(phash(original), phash(smaller)) <= MAX_DISTANCE
    assert hamming(phash(original), phash(other)) > 4 * MAX_DISTANCE


# --- during a download ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},  # border, jpg
        {"resize_mode": "keep_ratio", "encode_format": "webp"},
        {"resize_mode": "center_crop", "encode_format": "png"},
        {"resize_mode": "no", "skip_reencode": True},  # jpgs stored as downloaded: the decoded source is hashed
        {"disable_all_reencoding": True},  # no pixels kept: the stage decodes the stored bytes
    ],
    ids=["border-jpg", "keep_ratio-webp", "center_crop-png", "no-skip_reencode", "disable_all_reencoding"],
)
def test_phash_column_matches_imagehash_of_the_stored_image(tmp_path, server, corpus_urls, options):
    broken = server.url("/status/404")
    url_list = write_url_list([{"url": u} for u in [*corpus_urls, broken]], tmp_path / "u.txt", "txt")
    output = tmp_path / "out"
    download(
        str(url_list),
        output_folder=str(output),
        output_format="webdataset",
        compute_phash=True,
        thread_count=4,
        **options,
    )
    table = read_metadata(output)
    assert table.schema.field("phash").type == pa.string()
    assert table.column_names[-2:] == ["sha256", "phash"]  # after the hash, the last built-in column
    rows = {row["key"]: row for row in table.to_pylist()}
    extension = options.get("encode_format", "jpg")
    _, samples = tar_samples(output / "00000.tar")
    assert len(samples) == len(CORPUS)
    hashes = []
    for key, members in samples.items():
        ours = rows[key]["phash"]
        assert json.loads(members["json"])["phash"] == ours
        expected = reference(members[extension])
        distance = hamming(from_hex(ours), from_hex(expected))
        assert distance <= MAX_DISTANCE, (rows[key]["url"], ours, expected, distance)
        hashes.append(from_hex(ours))
    # different photos are far apart: the column is no constant
    assert min(hamming(a, b) for a, b in itertools.combinations(hashes, 2)) > MAX_DISTANCE
    failed = [row for row in rows.values() if row["status"] != "success"]
    assert [row["phash"] for row in failed] == [None]


def test_no_phash_column_unless_asked(tmp_path, server, corpus_urls):
    url_list = write_url_list([{"url": corpus_urls[0]}], tmp_path / "u.txt", "txt")
    download(str(url_list), output_folder=str(tmp_path / "out"), output_format="parquet")
    assert "phash" not in read_metadata(tmp_path / "out").column_names


def test_the_hash_does_not_decode_the_stored_image_again(monkeypatch):
    config = Config.from_options(url_list="x", compute_phash=True, resize_mode="keep_ratio")
    stages = download_stages(config)
    resize = next(s for s in stages if isinstance(s, Resize))
    hasher = next(s for s in stages if isinstance(s, PHash))
    assert stages.index(hasher) > stages.index(resize) and resize.keep_pixels
    budget = resize.resizer.budget
    source = encode(photo(1200, 800, 3), "jpg")

    def no_decode(*args, **kwargs):
        raise AssertionError("the phash stage decoded the stored image")

    monkeypatch.setattr(phash_module, "decode", no_decode)
    before = budget.used
    sample = Sample(0, "000000000", {}, source=source)
    resize(sample)
    assert sample.pixels is not None and sample.pixels.shape[:2] == (256, 384)
    assert budget.used == before + sample.pixels.nbytes  # the kept pixels stay counted
    hasher(sample)
    stored = cv2.imdecode(np.frombuffer(sample.data, np.uint8), cv2.IMREAD_COLOR)
    assert sample.fields["phash"] == to_hex(phash(sample.pixels))
    assert hamming(from_hex(sample.fields["phash"]), from_hex(reference(sample.data))) <= MAX_DISTANCE
    assert hamming(phash(stored), from_hex(sample.fields["phash"])) <= MAX_DISTANCE
    sample.free_source()  # what the worker calls once the last stage is done
    assert sample.pixels is None and budget.used == before


def test_without_kept_pixels_the_stored_bytes_are_decoded():
    hasher = PHash(Config.from_options(url_list="x").resize)
    data = encode(photo(500, 400, 8), "png")
    sample = Sample(0, "000000000", {}, data=data)
    hasher(sample)
    assert sample.fields["phash"] == reference(data)  # a lossless file: exactly imagehash's
    not_an_image = Sample(1, "000000001", {}, data=b"<html>no image</html>")
    hasher(not_an_image)
    assert not_an_image.ok and not_an_image.fields["phash"] is None


def test_options_and_reserved_column(tmp_path):
    with pytest.raises(ConfigError, match="compute_phash must be True or False; got 'maybe'"):
        Config.from_options(url_list="x", compute_phash="maybe")
    assert Config.from_options(url_list="x", compute_phash="true").metadata.compute_phash is True
    with pytest.raises(ConfigError, match="reserved names phash"):
        download("x.txt", output_folder=str(tmp_path / "out"), save_additional_columns=["phash"])


def test_folders_recorded_before_the_option_existed_still_match(tmp_path):
    folder = Folder(str(tmp_path))
    record = {"options": {"image_size": 256, "compute_phash": False, "apply_exif_orientation": False}, "url_list": {}}
    older = {"options": {"image_size": 256}, "url_list": {}}
    check(folder, older, record, IncrementalMode.INCREMENTAL, has_shards=True)  # no error
    newer = {**record, "options": {**record["options"], "compute_phash": True}}
    with pytest.raises(ConfigError, match="compute_phash was False, now True"):
        check(folder, older, newer, IncrementalMode.INCREMENTAL, has_shards=True)
