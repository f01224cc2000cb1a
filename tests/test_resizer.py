"""The resizer on real encoded images, and every resize mode end to end through the server."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from img2dataset_ng import download
from img2dataset_ng.config import Config
from img2dataset_ng.options import EncodeFormat, Interpolation, ResizeMode
from img2dataset_ng.stages.resize import ResizeError, Resizer
from tests.outputs import image_size, read_metadata, stored_images, write_url_list
from tests.server import make_image


def resizer(**options) -> Resizer:
    return Resizer(Config.from_options(url_list="x", **options).resize)


# (source width, height) -> expected (width, height) at image_size 256, per mode
SIZES = [(640, 480), (480, 640), (100, 50), (256, 300), (3000, 1000)]
EXPECTED = {
    "no": [(640, 480), (480, 640), (100, 50), (256, 300), (3000, 1000)],
    "keep_ratio": [(341, 256), (256, 341), (512, 256), (256, 300), (768, 256)],
    "keep_ratio_largest": [(256, 192), (192, 256), (256, 128), (218, 256), (256, 85)],
    "center_crop": [(256, 256)] * 5,
    "border": [(256, 256)] * 5,
}
EXPECTED_ONLY_IF_BIGGER = {
    "no": EXPECTED["no"],
    "keep_ratio": [(341, 256), (256, 341), (100, 50), (256, 300), (768, 256)],
    "keep_ratio_largest": [(256, 192), (192, 256), (100, 50), (218, 256), (256, 85)],
    "center_crop": [(256, 256), (256, 256), (100, 50), (256, 300), (256, 256)],
    "border": [(256, 256), (256, 256), (100, 50), (256, 256), (256, 256)],
}


@pytest.mark.parametrize("mode", list(EXPECTED))
@pytest.mark.parametrize("only_if_bigger", [False, True])
def test_resize_mode_sizes(mode, only_if_bigger):
    expected = (EXPECTED_ONLY_IF_BIGGER if only_if_bigger else EXPECTED)[mode]
    r = resizer(resize_mode=mode, resize_only_if_bigger=only_if_bigger)
    for (w, h), want in zip(SIZES, expected):
        out = r(make_image(w, h, "jpg"))
        assert (out.width, out.height) == want
        assert image_size(out.data) == want
        assert (out.original_width, out.original_height) == (w, h)


def test_border_pads_with_white_and_center_crop_keeps_the_middle():
    src = make_image(400, 200, "png")
    out = cv2.imdecode(
        np.frombuffer(resizer(resize_mode="border", encode_format="png", encode_quality=3)(src).data, np.uint8), 1
    )
    assert out.shape == (256, 256, 3)
    assert (out[:60] == 255).all() and (out[-60:] == 255).all()  # 256x128 image centred, 64 rows of white each side
    assert not (out[100:156] == 255).all()

    crop = cv2.imdecode(
        np.frombuffer(resizer(resize_mode="center_crop", encode_format="png", encode_quality=3)(src).data, np.uint8), 1
    )
    full = cv2.resize(cv2.imdecode(np.frombuffer(src, np.uint8), 1), (512, 256), interpolation=cv2.INTER_AREA)
    diff = np.abs(crop.astype(int) - full[:, 128:384].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.5  # an off-centre crop differs by far more


@pytest.mark.parametrize(
    "name, interpolation",
    [
        ("bilinear", Interpolation.LINEAR),
        ("lanczos4", Interpolation.LANCZOS),
        ("nearest", Interpolation.NEAREST),
        ("cubic", Interpolation.CUBIC),
    ],
)
def test_interpolation_names_and_aliases(name, interpolation):
    r = resizer(resize_mode="keep_ratio", upscale_interpolation=name, downscale_interpolation=name)
    assert r.config.upscale_interpolation is interpolation
    src = make_image(64, 32, "png")
    out = cv2.imdecode(np.frombuffer(r(src).data, np.uint8), 1)
    assert out.shape[:2] == (256, 512)


def test_upscale_and_downscale_use_their_own_interpolation():
    src = make_image(40, 40, "png")
    nearest = resizer(resize_mode="keep_ratio", upscale_interpolation="nearest", encode_format="png", encode_quality=1)(
        src
    )
    cubic = resizer(resize_mode="keep_ratio", upscale_interpolation="cubic", encode_format="png", encode_quality=1)(src)
    # nearest-neighbour upscaling makes few distinct colours per 6x6 block; cubic does not
    decoded = [cv2.imdecode(np.frombuffer(x.data, np.uint8), 1) for x in (nearest, cubic)]
    assert len(np.unique(decoded[0].reshape(-1, 3), axis=0)) < len(np.unique(decoded[1].reshape(-1, 3), axis=0))


def test_alpha_is_composited_onto_white_for_jpg():
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent black
    ok, png = cv2.imencode(".png", rgba)
    out = cv2.imdecode(np.frombuffer(resizer(resize_mode="no")(png.tobytes()).data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.shape == (64, 64, 3) and out.min() >= 250
    kept = resizer(resize_mode="no", encode_format="png", encode_quality=1)(png.tobytes())
    assert cv2.imdecode(np.frombuffer(kept.data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (64, 64, 4)


def test_skip_reencode_keeps_original_bytes_only_when_nothing_changes():
    jpg = make_image(200, 100, "jpg")
    assert resizer(resize_mode="no", skip_reencode=True)(jpg).data == jpg
    assert resizer(resize_mode="keep_ratio", image_size=100, skip_reencode=True)(jpg).data == jpg
    assert resizer(resize_mode="keep_ratio", image_size=50, skip_reencode=True)(jpg).data != jpg
    assert resizer(resize_mode="no", skip_reencode=False)(jpg).data != jpg
    png = make_image(200, 100, "png")
    assert resizer(resize_mode="no", skip_reencode=True)(png).data[:3] == b"\xff\xd8\xff"  # format differs: re-encoded


def test_disable_all_reencoding_stores_bytes_as_they_are():
    data = b"anything at all"
    out = resizer(disable_all_reencoding=True)(data)
    assert out.data == data and (out.width, out.height, out.original_width, out.original_height) == (None,) * 4


@pytest.mark.parametrize(
    "options, size, error",
    [
        ({"min_image_size": 100}, (200, 99), "image too small"),
        ({"max_image_area": 10_000}, (101, 100), "image area too large"),
        ({"max_aspect_ratio": 2.0}, (201, 100), "aspect ratio too large"),
    ],
)
def test_size_filters(options, size, error):
    with pytest.raises(ResizeError, match=error):
        resizer(**options)(make_image(*size, "jpg"))
    w, h = size
    ok = resizer(**options)(make_image(w - 1, h + 1 if error == "image too small" else h, "jpg"))
    assert ok.width == 256


def test_undecodable_bytes_fail_with_a_reason():
    for data, reason in (
        (b"", "unsupported image format"),
        (b"<html></html>", "unsupported image format"),
        (b"\xff\xd8\xff" + b"\0" * 100, "Image decoding error"),
        (make_image(64, 64, "jpg")[:-400], "truncated image"),
        (make_image(64, 64, "png")[:-400], "Image decoding error"),
    ):
        with pytest.raises(ResizeError, match=reason):
            resizer()(data)


def test_blur_boxes_only_changes_the_boxes():
    src = make_image(200, 200, "png")
    resize = resizer(resize_mode="no", encode_format="png", encode_quality=1)
    a = cv2.imdecode(np.frombuffer(resize(src).data, np.uint8), 1).astype(int)
    b = cv2.imdecode(np.frombuffer(resize(src, [[0.1, 0.1, 0.3, 0.3]]).data, np.uint8), 1).astype(int)
    assert np.abs(a[10:70, 10:70] - b[10:70, 10:70]).mean() > 1  # inside (box widened by 10%)
    assert (a[100:, 100:] == b[100:, 100:]).all()  # far outside


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_every_resize_mode_end_to_end(tmp_path, server, mode):
    rows = [{"url": server.url(f"/img/{w}x{h}.jpg")} for w, h in SIZES]
    url_list = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    download(
        str(url_list),
        output_folder=str(tmp_path / "out"),
        input_format="parquet",
        output_format="webdataset",
        resize_mode=mode,
        thread_count=4,
    )
    meta = {r["url"]: r for r in read_metadata(tmp_path / "out").to_pylist()}
    images = stored_images(tmp_path / "out", "webdataset")
    for row, want in zip(rows, EXPECTED[mode]):
        got = meta[row["url"]]
        assert (got["width"], got["height"]) == want
        assert image_size(images[got["key"]]["image"]) == want
    assert EncodeFormat.JPG.value == "jpg" and ResizeMode(mode)


def test_bbox_column_blurs_from_csv_text(tmp_path, server):
    rows = [
        {"url": server.url("/img/200x200.png"), "faces": "[[0.1, 0.1, 0.3, 0.3]]"},
        {"url": server.url("/img/200x200.png"), "faces": "[]"},
    ]
    url_list = write_url_list(rows, tmp_path / "u.csv", "csv")
    download(
        str(url_list),
        input_format="csv",
        bbox_col="faces",
        output_folder=str(tmp_path / "out"),
        output_format="parquet",
        encode_format="png",
        encode_quality=1,
        resize_mode="no",
        thread_count=2,
    )
    table = read_metadata(tmp_path / "out")
    assert table.column("status").to_pylist() == ["success", "success"]
    blurred, plain = (cv2.imdecode(np.frombuffer(b, np.uint8), 1).astype(int) for b in table.column("png").to_pylist())
    assert np.abs(blurred[10:70, 10:70] - plain[10:70, 10:70]).mean() > 1
    assert (blurred[100:, 100:] == plain[100:, 100:]).all()


def test_lanczos_upscale_is_opencvs_within_one_level():
    """Computed on float32 copies (twice as fast): OpenCV's Lanczos-4, a value off by 1 at most."""
    src = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8), (3, 3), 1)
    ok, png = cv2.imencode(".png", src)
    r = resizer(resize_mode="keep_ratio", upscale_interpolation="lanczos", encode_format="png", encode_quality=1)
    stored = cv2.imdecode(np.frombuffer(r(png.tobytes()).data, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = cv2.resize(src, (370, 256), interpolation=cv2.INTER_LANCZOS4)
    assert stored.shape == expected.shape
    assert np.abs(stored.astype(int) - expected).max() <= 1
    assert np.mean(stored != expected) < 0.2
