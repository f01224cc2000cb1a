"""find_duplicates / `img2dataset-ng duplicates`: exact, near and placeholder clusters of a finished dataset.

The main dataset is a real download from the local server (three virtual hosts, compute_phash=True,
webdataset, three shards): 30 distinct photo-like images, and planted among them an exact copy (the same
file under a second url), near copies of one photo (resized, re-encoded at another JPEG quality, framed by
a border), and a placeholder that one host serves for 20 urls (and another host once). Every planted
cluster must be found exactly, and nothing else.
"""

from __future__ import annotations

import itertools
import logging

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import InputError, download, find_duplicates
from img2dataset_ng.cli import BAD_INPUT, DONE, main
from img2dataset_ng.duplicates import MAX_MAX_DISTANCE, REPORT_FILE, REPORT_FOLDER, Kind, band_count, near_pairs
from img2dataset_ng.stages.phash import hamming
from tests.outputs import read_metadata, write_url_list
from tests.test_quality import photo

PHOTOS, MIRROR, PLACEHOLDERS = "photos.test", "mirror.test", "placeholder.test"
SIZES = [(640, 480), (480, 640), (500, 500), (800, 450), (300, 400)]
PLACEHOLDER_URLS = 20
REPORT_COLUMNS = ["cluster", "kind", "key", "url", "host", "sha256", "phash", "distance"]


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def placeholder() -> np.ndarray:
    """A "no image" picture: a light frame with a grey icon and a caption."""
    img = np.full((300, 400, 3), 235, np.uint8)
    cv2.rectangle(img, (150, 70), (250, 170), (180, 180, 180), -1)
    cv2.circle(img, (200, 120), 30, (120, 120, 120), -1)
    cv2.putText(img, "no image", (120, 240), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (90, 90, 90), 2)
    return img


@pytest.fixture(scope="module")
def dataset(server, tmp_path_factory):
    """(output folder, {name: url(s)}, every url in list order) of the download described above."""
    urls: dict[str, list[str]] = {}

    def serve(name: str, host: str, path: str, body: bytes) -> str:
        server.put(path, body)
        url = server.host_url(host, path)
        urls.setdefault(name, []).append(url)
        return url

    for i in range(30):  # distinct photos: shapes, textures and noise, each seed its own
        width, height = SIZES[i % len(SIZES)]
        serve("photos", PHOTOS, f"/dup/photo/{i}.jpg", jpeg(photo(width, height, 100 + i)))
    original = photo(640, 480, 7)
    near = {
        "original": jpeg(original),
        "resized": jpeg(cv2.resize(original, (320, 240), interpolation=cv2.INTER_AREA)),
        "quality": jpeg(original, quality=40),
        "border": jpeg(cv2.copyMakeBorder(original, 8, 8, 8, 8, cv2.BORDER_CONSTANT, value=(255, 255, 255))),
    }
    near_urls = [serve("near", PHOTOS, f"/dup/near/{name}.jpg", body) for name, body in near.items()]
    copy = serve("exact", MIRROR, "/dup/copy/3.jpg", jpeg(photo(*SIZES[3], 103)))  # photos' #3, byte for byte
    stand_in = jpeg(placeholder())
    for n in range(PLACEHOLDER_URLS):
        serve("placeholder", PLACEHOLDERS, f"/dup/item/{n}.jpg", stand_in)
    serve("placeholder", PHOTOS, "/dup/photo/missing.jpg", stand_in)  # served once by another host too
    failed = [server.host_url(PHOTOS, "/status/404"), server.host_url(PLACEHOLDERS, "/status/404")]

    photos = urls["photos"]
    # interleaved, so that every cluster spans shards: the original of the near copies comes first
    ordered = photos[:10] + near_urls[:2] + photos[10:20] + [copy] + urls["placeholder"][:10] + failed
    ordered += photos[20:] + near_urls[2:] + urls["placeholder"][10:]
    urls["exact"] = [photos[3], copy]
    url_list = write_url_list([{"url": u} for u in ordered], tmp_path_factory.mktemp("dup") / "urls.txt", "txt")
    output = tmp_path_factory.mktemp("dup") / "out"
    summary = download(
        str(url_list),
        output_folder=str(output),
        output_format="webdataset",
        compute_phash=True,
        thread_count=16,
        number_sample_per_shard=20,
        resolve=server.resolve(PHOTOS, MIRROR, PLACEHOLDERS),
    )
    assert summary.successes == len(ordered) - len(failed)
    return output, urls, ordered


def clusters_by_urls(result) -> set[tuple[str, frozenset[str]]]:
    return {(cluster.kind.value, frozenset(m.url for m in cluster.members)) for cluster in result.clusters}


def test_planted_clusters_are_found_exactly_and_nothing_else(dataset, caplog):
    output, urls, ordered = dataset
    caplog.set_level(logging.INFO, logger="img2dataset_ng")
    result = find_duplicates(str(output))
    assert (result.shards, result.samples) == (3, len(ordered) - 2)  # the failed rows do not count
    assert (result.hash_column, result.has_phash) == ("sha256", True)
    assert clusters_by_urls(result) == {
        ("exact", frozenset(urls["exact"])),
        ("near", frozenset(urls["near"])),
        ("placeholder", frozenset(urls["placeholder"])),
    }

    near = result.of_kind(Kind.NEAR)[0]
    assert [m.url for m in near.members][0] == urls["near"][0]  # the original: first in row order
    assert near.members[0].distance == 0 and all(m.distance <= result.max_distance for m in near.members)
    assert max(m.distance for m in near.members) > 0  # joined by the band search, not by an identical phash
    assert len({m.exact_hash for m in near.members}) == 4  # four files, one picture
    exact = result.of_kind(Kind.EXACT)[0]
    assert {m.host for m in exact.members} == {PHOTOS, MIRROR} and len({m.exact_hash for m in exact.members}) == 1
    assert [m.distance for m in exact.members] == [0, 0]
    stand_in = result.of_kind(Kind.PLACEHOLDER)[0]
    assert stand_in.hosts == ((PLACEHOLDERS, PLACEHOLDER_URLS),)  # photos.test served it once: not named
    assert result.placeholder_hosts() == [(PLACEHOLDERS, PLACEHOLDER_URLS, 1)]
    assert result.counts() == {
        "exact": {"clusters": 1, "samples": 2, "redundant": 1},
        "near": {"clusters": 1, "samples": 4, "redundant": 3},
        "placeholder": {"clusters": 1, "samples": PLACEHOLDER_URLS + 1, "redundant": PLACEHOLDER_URLS},
    }

    # the other photos are far apart for the hash: the absence of false clusters is no luck of the threshold
    rows = read_metadata(output).to_pylist()
    photo_hashes = [int(r["phash"], 16) for r in rows if r["url"] in set(urls["photos"]) - set(urls["exact"])]
    assert min(hamming(a, b) for a, b in itertools.combinations(photo_hashes, 2)) > 2 * result.max_distance

    # the report: one row per (cluster, sample), in cluster order; no shard glob sees it
    report = pq.read_table(output / REPORT_FOLDER / REPORT_FILE)
    assert report.column_names == REPORT_COLUMNS
    assert report.num_rows == sum(c.size for c in result.clusters)
    table = report.to_pylist()
    assert [r["cluster"] for r in table] == sorted(r["cluster"] for r in table)
    for cluster in result.clusters:
        mine = [r for r in table if r["cluster"] == cluster.id]
        assert [r["key"] for r in mine] == [m.key for m in cluster.members]
        assert {r["kind"] for r in mine} == {cluster.kind.value}
    by_url = {r["url"]: r for r in table}
    assert by_url[urls["placeholder"][0]]["host"] == PLACEHOLDERS and by_url[urls["exact"][1]]["host"] == MIRROR
    assert read_metadata(output).num_rows == len(ordered)  # `*.parquet`: the shards only
    assert result.report.endswith(f"{REPORT_FOLDER}/{REPORT_FILE}")

    log = caplog.text
    assert "exact (same file): 1 cluster(s), 2 sample(s)" in log
    assert "near (phash within 4 bits): 1 cluster(s), 4 sample(s)" in log
    assert f"{PLACEHOLDER_URLS:6d}     1  {PLACEHOLDERS}" in log  # the top placeholder hosts
    assert "compute_phash" not in log


def test_command_line(dataset, capsys, tmp_path):
    output, urls, _ = dataset
    # placeholders need 30 urls of one host now: the stand-in is an exact duplicate like any other
    assert main(["duplicates", str(output), "--placeholder_min_urls", "30", "--max-distance", "4"]) == DONE
    kinds = {}
    for row in pq.read_table(output / REPORT_FOLDER / REPORT_FILE).to_pylist():
        kinds.setdefault(row["kind"], set()).add(row["url"])
    assert kinds == {"exact": set(urls["exact"]) | set(urls["placeholder"]), "near": set(urls["near"])}

    empty = tmp_path / "not-a-dataset"
    empty.mkdir()
    (empty / "notes.txt").write_text("no shards here")
    with pytest.raises(SystemExit) as stop:
        main(["duplicates", str(empty)])
    assert stop.value.code == BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no shard metadata (NNNNN.parquet files)" in err
    with pytest.raises(InputError, match="does not exist"):
        find_duplicates(str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as stop:
        main(["duplicates", str(output), "--max_distance", "40"])
    assert stop.value.code == BAD_INPUT
    assert "max_distance must be an integer from 0 to 16" in capsys.readouterr().err


def test_an_img2dataset_folder_without_phash_gets_exact_and_placeholder_clusters(tmp_path, monkeypatch, caplog):
    """Metadata as img2dataset 1.47's parquet output writes it (image bytes in a `jpg` column, no phash)."""

    def row(url: str, sha: str | None, status: str = "success") -> dict:
        return {"url": url, "key": "", "status": status, "error_message": None, "sha256": sha, "jpg": b"\xff" * 100}

    shards = [
        [row("http://a.test/1", "h1"), row("http://b.test/1", "h1")]  # exact, over two hosts
        + [row(f"http://z.test/{n}", "h3") for n in range(3)]
        + [row("http://c.test/ok", "h2"), row("http://c.test/bad", "h2", "failed_to_download")],  # a failed row
        [row(f"http://Z.test:8080/{n}", "h3") for n in range(3, 5)]  # the same host for the placeholder
        + [row(f"http://w.test/{n}", "h4") for n in range(4)]  # 4 urls: below placeholder_min_urls
        + [row("http://v.test/same", "h5") for _ in range(5)],  # 5 rows, one url: no placeholder
    ]
    for number, rows in enumerate(shards):
        for index, r in enumerate(rows):
            r["key"] = f"{number:05d}{index:04d}"
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{number:05d}.parquet")
    read_columns = []
    original_read = pq.ParquetFile.read
    monkeypatch.setattr(
        pq.ParquetFile,
        "read",
        lambda self, columns=None, **kw: read_columns.append(columns) or original_read(self, columns, **kw),
    )
    caplog.set_level(logging.INFO, logger="img2dataset_ng")

    result = find_duplicates(str(tmp_path))
    assert all(columns is not None and "jpg" not in columns for columns in read_columns) and len(read_columns) == 2
    assert (result.samples, result.has_phash) == (17, False)
    clusters = {(c.members[0].exact_hash, c.kind.value, c.size) for c in result.clusters}
    # h2: its second row failed; h4: 4 urls, below placeholder_min_urls; h5: 5 rows but one url
    assert clusters == {("h1", "exact", 2), ("h3", "placeholder", 5), ("h4", "exact", 4), ("h5", "exact", 5)}
    stand_in = result.of_kind("placeholder")[0]
    assert stand_in.hosts == (("z.test", 5),)  # the host from the url: lowercase, no port
    assert all(m.distance is None for c in result.clusters for m in c.members)
    assert "no near duplicates: the metadata has no phash column; download with compute_phash=True" in caplog.text
    report = pq.read_table(tmp_path / REPORT_FOLDER / REPORT_FILE)
    assert report.column_names == ["cluster", "kind", "key", "url", "host", "sha256", "distance"]


def test_band_search_finds_every_pair_within_the_distance():
    """The banded search against all pairs, on random hashes with planted neighbours 1 to 8 bits away."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64) << np.uint64(1) | rng.integers(0, 2, 300, dtype=np.uint64)
    planted = [int(v) ^ sum(1 << int(b) for b in rng.choice(64, rng.integers(1, 9), replace=False)) for v in base[:120]]
    values = np.unique(np.concatenate([base, np.array(planted, np.uint64)]))
    count = len(values)
    # every pair's distance, counted bit by bit
    bits = np.unpackbits((values[:, None] ^ values[None, :]).view(np.uint8)).reshape(count, count, 64).sum(axis=2)
    for distance in range(MAX_MAX_DISTANCE + 1):
        expected = set(zip(*(side.tolist() for side in np.nonzero(np.triu(bits <= distance, k=1)))))
        assert distance == 0 or expected
        # every number of bands: exact agreement on a band (max_distance + 1 of them), or probes within a radius
        counts = range(3, max(3, distance + 1) + 1) if distance <= 8 else []  # (radius 5 of 21 bits: 27k probes)
        for count in [None, *counts]:
            found = {tuple(sorted(pair)) for pair in near_pairs(values, distance, count).tolist()}
            assert found == expected, (distance, count)
    assert band_count(1000, 4) == 5 and band_count(2_000_000, 4) == 3  # wider bands pay off on large datasets
