"""input_format="image_folder": a folder of images with `.txt` and `.cls` sidecars becomes webdataset shards
that webdataset and wids read back with every image, label and caption."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from img2dataset_ng import download
from img2dataset_ng.errors import InputError
from tests.outputs import read_metadata, read_stats
from tests.server import make_image

webdataset = pytest.importorskip("webdataset")
wids = pytest.importorskip("wids")
COUNT = 200


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """200 images in two subfolders, each with a caption and a label; a few without one or the other."""
    root = tmp_path_factory.mktemp("images")
    for i in range(COUNT):
        sub = root / ("cats" if i % 2 else "dogs")
        sub.mkdir(exist_ok=True)
        name = sub / f"img_{i:03d}"
        ext = "png" if i % 10 == 3 else "jpg"
        (sub / f"img_{i:03d}.{ext}").write_bytes(make_image(40 + i % 7, 30 + i % 5, ext, seed=i))
        (sub / f"img_{i:03d}.txt").write_text(f"caption of image {i}")
        (sub / f"img_{i:03d}.cls").write_text(f"{i % 2}\n")
        if i == 0:
            name.with_suffix(".json").write_text(json.dumps({"photographer": "someone"}))
    (root / "notes.md").write_text("not an image")
    return root


def expected(folder) -> dict[str, tuple[str, str]]:
    """url (the image's path) -> (caption, label)."""
    return {
        str(p): (p.with_suffix(".txt").read_text(), p.with_suffix(".cls").read_text().strip())
        for p in folder.rglob("*")
        if p.suffix in (".jpg", ".png")
    }


def test_a_folder_of_images_becomes_shards_that_webdataset_and_wids_read(folder, tmp_path):
    out = tmp_path / "out"
    summary = download(
        str(folder),
        input_format="image_folder",
        output_folder=str(out),
        output_format="webdataset",
        number_sample_per_shard=64,
        image_size=32,
        processes_count=1,
    )
    assert summary.shards_done == 4 and len(read_stats(out)) == 4
    want = expected(folder)
    rows = read_metadata(out).to_pylist()
    assert len(rows) == COUNT and all(r["status"] == "success" for r in rows)
    by_url = {r["url"].removeprefix("file://"): r for r in rows}
    assert set(by_url) == set(want)
    assert [r["url"] for r in rows] == sorted(r["url"] for r in rows)  # sorted paths, cut into shards in order
    for url, (caption, label) in want.items():
        assert (by_url[url]["caption"], by_url[url]["cls"]) == (caption, label)
    first_dog = next(r for r in rows if r["url"].endswith("dogs/img_000.jpg"))
    assert json.loads(first_dog["sidecar_json"])["photographer"] == "someone"
    assert sum(r["sidecar_json"] is not None for r in rows) == 1

    seen = {}
    dataset = webdataset.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    for sample in dataset:
        meta = json.loads(sample["json"])
        image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[:2] == (32, 32)
        seen[meta["url"].removeprefix("file://")] = (sample["txt"].decode(), sample["cls"].decode())
    assert seen == want

    indexed = wids.ShardListDataset(str(out / "wids-index.json"))
    assert len(indexed) == COUNT
    through_index = {}
    for i in range(len(indexed)):  # random access, through the index: every sample
        sample = {name: text(value) for name, value in indexed[i].items() if name != ".jpg"}
        assert np.asarray(indexed[i][".jpg"]).shape[:2] == (32, 32)
        through_index[sample[".json"]["url"].removeprefix("file://")] = (sample[".txt"], str(sample[".cls"]))
    assert through_index == want  # (wids decodes a .cls as an int)


def text(value):
    """What wids gives for a member, as a plain value: its default decoders turn json into a dict, text into str."""
    if hasattr(value, "read"):
        value = value.read()
    if isinstance(value, bytes):
        value = value.decode()
    return value.strip() if isinstance(value, str) else value


def test_an_empty_folder_fails_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no image here")
    with pytest.raises(InputError, match="holds no image"):
        download(str(tmp_path / "empty"), input_format="image_folder", output_folder=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
