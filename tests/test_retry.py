"""incremental_mode="retry_failed": the failed rows of finished shards are downloaded again and each such
shard is rewritten in place, to exactly what an uninterrupted run would have made; a kill at any moment
leaves the old shard or the new one, and the same command finishes the job.

Real downloads from tests/server.py. A flaky row is `/flaky/{name}/1/...`: 503 for its first request only,
each on a virtual host of its own (`resolve`), since the fetch stage holds a host back after a 503. The
first pass fails the flaky rows (retries=0); a clean reference run of the same urls, made after their first
request, has them all succeed: that is what the retry must give. Shards run in this process (a distributor
given by path) except where the command line is the point.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import ConfigError, download, retry, storage
from img2dataset_ng.naming import is_ours, retry_record_name, retry_staging_name
from tests.outputs import read_metadata, read_stats, tar_samples, write_url_list
from tests.server import make_image
from tests.test_storage import fetch as copy_from_s3
from tests.test_storage import fresh_prefix, s3  # noqa: F401 - s3: the S3 server fixture

ROOT = Path(__file__).parents[1]
PER_SHARD = 10
IN_PROCESS = "tests.outputs:InProcessDistributor"
SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet", "tfrecord": ".tfrecord", "files": ""}
COUNTS = ("count", "successes", "failed_to_download", "failed_to_resize", "status_dict")


def url_list(tmp_path: Path, server, tag: str, n: int = 60, delay: float = 0.0) -> tuple[Path, list[str]]:
    """n rows: 30% flaky (each on its own host; `delay` seconds once it answers), one in ten a 404,
    the others images. Returns the list and the flaky hosts."""
    rows, hosts = [], []
    for i in range(n):
        if i % 10 in (0, 4, 7):
            host = f"{tag}-{i}.test"
            hosts.append(host)
            slow = f"/slow/{delay}" if delay else ""
            url = server.host_url(host, f"/flaky/retry-{tag}-{i}/1{slow}/img/40x30.jpg?seed={i}")
        elif i % 10 == 5:
            url = server.url("/status/404")
        else:
            url = server.url(f"/img/40x30.jpg?seed={i}")
        rows.append({"url": url, "caption": f"caption {i}"})
    return write_url_list(rows, tmp_path / f"urls-{tag}.parquet", "parquet"), hosts


def options(server, output: str | Path, output_format: str, hosts: list[str], **extra) -> dict:
    return {
        "input_format": "parquet",
        "caption_col": "caption",
        "output_folder": str(output),
        "output_format": output_format,
        "number_sample_per_shard": PER_SHARD,
        "thread_count": 4,
        "image_size": 32,
        "resolve": server.resolve(*hosts) if hosts else None,
        "distributor": IN_PROCESS,
        **extra,
    }


def cli(urls: Path, flags: dict) -> list[str]:
    args = [sys.executable, "-m", "img2dataset_ng", str(urls)]
    for name, value in flags.items():
        if value is not None:
            args += [f"--{name}", json.dumps(value) if isinstance(value, list) else str(value)]
    return args


def shard_files(folder: Path, output_format: str) -> dict[str, bytes]:
    """Every shard file's bytes: tar, tfrecord, parquet, and each file of the `files` folders."""
    paths = list(folder.glob("*.parquet"))
    if output_format == "files":
        paths += [p for d in folder.iterdir() if d.is_dir() and d.name.isdigit() for p in d.iterdir()]
    elif output_format != "parquet":
        paths += folder.glob(f"*{SUFFIXES[output_format]}")
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(paths)}


def stats_counts(folder: Path) -> dict[str, dict]:
    return {name: {k: stats[k] for k in COUNTS} for name, stats in read_stats(folder).items()}


def assert_same_output(folder: Path, reference: Path, output_format: str) -> None:
    """The folder holds what the reference run made: the same entries, metadata (schema and values),
    shard files byte for byte (tar members, their names and order included), and stats counts."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
    ours, theirs = read_metadata(folder), read_metadata(reference)
    assert ours.schema == theirs.schema and ours.equals(theirs)
    assert shard_files(folder, output_format) == shard_files(reference, output_format)
    if output_format == "webdataset":
        for tar in reference.glob("*.tar"):
            assert tar_samples(folder / tar.name)[0] == tar_samples(tar)[0]
    assert stats_counts(folder) == stats_counts(reference)


@pytest.fixture(scope="module")
def flaky(tmp_path_factory, server):
    """Per tag: a url list, its flaky hosts, the folder of its first pass (kept pristine) and a reference run."""
    made: dict[str, tuple] = {}

    def make(tag: str, output_format: str = "webdataset", delay: float = 0.0, n: int = 60):
        if tag not in made:
            tmp = tmp_path_factory.mktemp(tag)
            urls, hosts = url_list(tmp, server, tag, n, delay)
            first = download(str(urls), **options(server, tmp / "first", output_format, hosts))
            assert first.status_dict.get("HTTP Error 503: Service Unavailable") == len(hosts)
            reference = download(str(urls), **options(server, tmp / "reference", output_format, hosts))
            assert reference.successes == first.successes + len(hosts)
            made[tag] = urls, hosts, tmp / "first", tmp / "reference"
        return made[tag]

    return make


def copy_of(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


# --- 1. retry_failed gives what a run without those failures gives --------------------------------------


@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "files", "tfrecord"])
def test_retry_failed_gives_the_output_of_a_run_where_nothing_failed(tmp_path, server, flaky, output_format):
    urls, hosts, first, reference = flaky(f"basic-{output_format}", output_format)
    out = copy_of(first, tmp_path / "out")
    summary = download(str(urls), **options(server, out, output_format, hosts, incremental_mode="retry_failed"))
    assert summary.failed_shards == [] and summary.shards_done == 6 and summary.shards_skipped == 0
    assert summary.successes == read_metadata(reference).column("status").to_pylist().count("success")
    assert_same_output(out, reference, output_format)
    assert not [name for name in os.listdir(out) if name.startswith("_retry_")]

    again = download(str(urls), **options(server, out, output_format, hosts, incremental_mode="retry_failed"))
    assert (again.shards_done, again.shards_skipped) == (0, 6)  # only 404s are left: nothing to retry


def test_a_shard_without_stats_file_is_downloaded_as_in_incremental_mode(tmp_path, server, flaky):
    urls, hosts, first, reference = flaky("basic-webdataset")
    out = copy_of(first, tmp_path / "out")
    (out / "00002_stats.json").unlink()
    (out / "00002.tar").write_bytes(b"what a killed run left")
    summary = download(str(urls), **options(server, out, "webdataset", hosts, incremental_mode="retry_failed"))
    assert summary.failed_shards == [] and summary.shards_done == 6
    assert_same_output(out, reference, "webdataset")


# --- 2. kill -9 at any moment of a retry, then the same command ---------------------------------------


def test_staging_names_match_no_shard_or_stats_glob_and_are_ours():
    for name in (retry_staging_name("00042"), retry_record_name("00042")):
        assert is_ours(name) and name.startswith("_")
        assert not name.endswith((".tar", ".parquet", ".tfrecord", "_stats.json")) and not name[0].isdigit()


KILLER = r"""
import os, signal, sys
sys.path.insert(0, os.getcwd())  # the distributor is given as tests.outputs:InProcessDistributor
from img2dataset_ng import cli, retry, storage

point, nth = sys.argv[1], int(sys.argv[2])
seen = 0


def kill_at_nth(counts):
    global seen
    if counts:
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)


move, write, commit = storage._move_local, storage.Folder.write, retry.RetryShard.commit


def moved(*args):
    move(*args)
    kill_at_nth(point == "move")


def written(self, name, *args, **kwargs):
    write(self, name, *args, **kwargs)
    kill_at_nth(point == "record" and name.endswith(".commit"))


def committing(self):
    kill_at_nth(point == "commit")
    commit(self)


storage._move_local, storage.Folder.write, retry.RetryShard.commit = moved, written, committing
sys.exit(cli.main(sys.argv[3:]))
"""


def assert_old_or_new_per_shard(folder: Path, old: Path, new: Path) -> None:
    """What a kill left: a shard whose stats file is the old one has all its old files; one whose stats file
    is the new one has all its new files; one without a stats file has a commit record (its moves run next)."""
    for stats in sorted(old.glob("*_stats.json")):
        shard = stats.name[:5]
        files = [f"{shard}.tar", f"{shard}.parquet"]
        now = folder / stats.name
        if not now.exists():
            assert (folder / retry_record_name(shard)).exists(), shard
        elif now.read_bytes() == stats.read_bytes():
            assert all((folder / f).read_bytes() == (old / f).read_bytes() for f in files), shard
        else:
            assert stats_counts_of(now) == stats_counts_of(new / stats.name), shard
            assert all((folder / f).read_bytes() == (new / f).read_bytes() for f in files), shard


def stats_counts_of(path: Path) -> dict:
    stats = json.loads(path.read_text())
    return {k: stats[k] for k in COUNTS}


def killed_at(tmp_path: Path, server, flaky, point: str, nth: int) -> tuple:
    """A retry of the flaky webdataset folder run by the command line, which kills itself (SIGKILL) at the
    `nth` time it reaches `point`. Returns the url list, the folder and the command's options."""
    urls, hosts, first, reference = flaky("basic-webdataset")
    out = copy_of(first, tmp_path / "out")
    flags = options(server, out, "webdataset", hosts, incremental_mode="retry_failed")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, str(script), point, str(nth), *cli(urls, flags)[3:]],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    names = os.listdir(out)
    assert all(is_ours(name) for name in names)
    assert any(name.startswith("_retry_") for name in names)
    assert_old_or_new_per_shard(out, first, reference)
    return urls, out, flags


@pytest.mark.parametrize("point, nth", [("commit", 1), ("record", 1), ("move", 1), ("move", 3), ("move", 5)])
def test_kill_9_in_the_commit_then_the_same_command_finishes(tmp_path, server, flaky, point, nth):
    """Killed at an exact step: a shard staged but not committed, its record just written, its first move
    done, its stats file moved (the record and staging folder not yet removed), and in the middle of the
    second shard's moves."""
    urls, out, flags = killed_at(tmp_path, server, flaky, point, nth)
    summary = download(str(urls), **flags)
    assert summary.failed_shards == []
    assert_same_output(out, reference_of(flaky), "webdataset")


def test_a_run_of_any_mode_finishes_a_committed_rewrite_first(tmp_path, server, flaky):
    urls, out, flags = killed_at(tmp_path, server, flaky, "move", 1)
    summary = download(str(urls), **{**flags, "incremental_mode": "incremental"})
    assert (summary.shards_done, summary.shards_skipped) == (0, 6)
    assert not [name for name in os.listdir(out) if name.startswith("_retry_")]
    _, _, first, reference = flaky("basic-webdataset")
    for name in sorted(os.listdir(first)):
        expected = reference if name.startswith("00000") else first
        if name.endswith("_stats.json"):
            assert stats_counts_of(out / name) == stats_counts_of(expected / name), name
        elif name[0].isdigit():
            assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def reference_of(flaky) -> Path:
    return flaky("basic-webdataset")[3]


def test_kill_9_at_random_moments_of_the_cli_then_the_same_command_finishes(tmp_path, server, flaky):
    """The command line killed at random moments of an uninterrupted retry's duration, then the same command
    run again. The shards run in the command's own process (the multiprocessing distributor's workers would
    be killed with it all the same)."""
    urls, hosts, first, reference = flaky("slow-webdataset", delay=0.15)
    flags = options(server, tmp_path / "timed", "webdataset", hosts, incremental_mode="retry_failed", thread_count=2)
    copy_of(first, tmp_path / "timed")
    start = time.monotonic()
    subprocess.run(cli(urls, flags), check=True, capture_output=True, cwd=ROOT, timeout=120)
    duration = time.monotonic() - start
    assert_same_output(tmp_path / "timed", reference, "webdataset")

    seed = random.randrange(1 << 30)
    pick = random.Random(seed)
    moments = sorted(pick.uniform(0.3, 1.0) * duration for _ in range(2))
    for i, moment in enumerate(moments):
        out = copy_of(first, tmp_path / f"killed-{i}")
        flags["output_folder"] = str(out)
        process = subprocess.Popen(
            cli(urls, flags), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(moment)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert_old_or_new_per_shard(out, first, reference)
        again = download(str(urls), **flags)  # the same command, in this process
        assert again.failed_shards == [], f"seed {seed}, killed at {moment:.2f}s"
        assert_same_output(out, reference, "webdataset")


# --- 3. a folder made by img2dataset 1.47 ------------------------------------------------------------


def as_img2dataset_147(reference: Path, target: Path, failures: dict[str, str]) -> None:
    """The reference run's webdataset shards as img2dataset 1.47 writes them (its downloader.py and
    writer.py, checked once against the real 1.47): rows and tar members in the order downloads finished
    (here: shuffled), members `KEY.jpg`, `KEY.json` (the row, indent=4), `KEY.txt`, written by webdataset's
    TarWriter (user `bigdata`, the time of writing), stats files without `shard_id`, no run record.
    The rows in `failures` ({key: error_message}) are failed downloads there, with nothing stored."""
    target.mkdir()
    shuffle = random.Random(147)
    for parquet in sorted(reference.glob("*.parquet")):
        shard = parquet.stem
        rows = pq.read_table(parquet).to_pylist()
        shuffle.shuffle(rows)
        for row in rows:
            if row["key"] in failures:
                row.update(status="failed_to_download", error_message=failures[row["key"]], exif=None, sha256=None)
                row.update(width=None, height=None, original_width=None, original_height=None)
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(parquet)), target / parquet.name)
        _, images = tar_samples(reference / f"{shard}.tar")
        with tarfile.open(target / f"{shard}.tar", "w") as tar:
            for row in rows:
                if row["status"] != "success":
                    continue
                members = {"jpg": images[row["key"]]["jpg"], "json": json.dumps(row, indent=4).encode()}
                members["txt"] = row["caption"].encode()
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{row['key']}.{extension}")
                    info.size, info.mtime, info.mode = len(data), time.time(), 0o444
                    info.uname = info.gname = "bigdata"
                    tar.addfile(info, io.BytesIO(data))
        (target / f"{shard}_stats.json").write_text(stats_as_147(rows))


def stats_as_147(rows: list[dict]) -> str:
    """1.47's NNNNN_stats.json: no shard_id, no hosts."""
    statuses = [row["status"] for row in rows]
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row["error_message"] or "success"] = reasons.get(row["error_message"] or "success", 0) + 1
    return json.dumps(
        {
            "count": len(rows),
            "successes": statuses.count("success"),
            "failed_to_download": statuses.count("failed_to_download"),
            "failed_to_resize": statuses.count("failed_to_resize"),
            "duration": 1.5,
            "start_time": 1700000000.0,
            "end_time": 1700000001.5,
            "status_dict": reasons,
        },
        indent=4,
    )


def test_retry_of_a_folder_made_by_img2dataset_147(tmp_path, server, flaky):
    urls, hosts, first, reference = flaky("basic-webdataset")
    keys = read_metadata(reference).column("key").to_pylist()
    spellings = [
        "<urlopen error [Errno 111] Connection refused>",
        "The read operation timed out",
        "Remote end closed connection without response",
        "HTTP Error 503: Service Unavailable",
        "<urlopen error [Errno -3] Temporary failure in name resolution>",
        "IncompleteRead(500 bytes read, 19500 more expected)",
    ]
    failures = {keys[i]: spellings[i % len(spellings)] for i in (1, 2, 12, 23, 41, 44, 55)}  # none in shard 3
    old = tmp_path / "made-by-1.47"
    as_img2dataset_147(reference, old, failures)
    out = copy_of(old, tmp_path / "out")

    summary = download(str(urls), **options(server, out, "webdataset", hosts, incremental_mode="retry_failed"))
    assert summary.failed_shards == [] and summary.shards_done == 5 and summary.shards_skipped == 1
    untouched = "00003"  # no failure there: left as 1.47 made it
    assert (out / f"{untouched}.tar").read_bytes() == (old / f"{untouched}.tar").read_bytes()
    (out / f"{untouched}.tar").write_bytes((reference / f"{untouched}.tar").read_bytes())
    (out / f"{untouched}.parquet").write_bytes((reference / f"{untouched}.parquet").read_bytes())
    (out / f"{untouched}_stats.json").write_bytes((reference / f"{untouched}_stats.json").read_bytes())
    assert_same_output(out, reference, "webdataset")


# --- 4. which rows: the default selection, an explicit one, bad values --------------------------------


def test_the_default_leaves_a_404_and_a_decoding_failure_alone_and_named_reasons_retry_them(tmp_path, server):
    tag = f"select-{time.monotonic_ns()}"
    server.put(f"/{tag}/changing.jpg", b"\xff\xd8\xff\xe0 not yet an image")
    rows = [{"url": server.url(f"/img/40x30.jpg?seed={i}"), "caption": f"c{i}"} for i in range(6)]
    rows[1]["url"] = server.url(f"/{tag}/changing.jpg")
    rows[4]["url"] = server.url(f"/status/404?{tag}")
    urls = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    out = tmp_path / "out"
    first = download(str(urls), **options(server, out, "webdataset", []))
    assert first.status_dict == {"success": 4, "Image decoding error": 1, "HTTP Error 404: Not Found": 1}
    server.put(f"/{tag}/changing.jpg", make_image(40, 30, "jpg", seed=99))  # what the url serves now
    hits = dict(server.hits)

    default = download(str(urls), **options(server, out, "webdataset", [], incremental_mode="retry_failed"))
    assert (default.shards_done, default.shards_skipped) == (0, 1)
    assert server.hits == hits

    named = download(
        str(urls),
        **options(
            server, out, "webdataset", [], incremental_mode="retry_failed", retry_failed_reasons=["failed_to_resize"]
        ),
    )
    assert named.shards_done == 1 and named.status_dict == {"success": 5, "HTTP Error 404: Not Found": 1}
    assert server.hits[f"/{tag}/changing.jpg"] == hits[f"/{tag}/changing.jpg"] + 1
    assert server.hits["/status/404"] == hits["/status/404"]  # the 404 was carried, not asked again

    by_prefix = download(
        str(urls),
        **options(
            server, out, "webdataset", [], incremental_mode="retry_failed", retry_failed_reasons=["HTTP Error 4"]
        ),
    )
    assert by_prefix.shards_done == 1 and server.hits["/status/404"] == hits["/status/404"] + 1
    assert server.hits[f"/{tag}/changing.jpg"] == hits[f"/{tag}/changing.jpg"] + 1
    rows_now = read_metadata(out).to_pylist()
    assert [r["status"] for r in rows_now] == ["success"] * 4 + ["failed_to_download", "success"]


@pytest.mark.parametrize(
    "given, named",
    [
        ({"retry_failed_reasons": []}, "retry_failed_reasons"),
        ({"retry_failed_reasons": ["success"]}, "retry_failed_reasons"),
        ({"retry_failed_reasons": "timed out"}, "retry_failed_reasons"),
        ({"retry_failed_reasons": ["timed out", ""]}, "retry_failed_reasons"),
        ({"retry_failed_reasons": ["timed out"], "incremental_mode": "incremental"}, "retry_failed_reasons"),
        ({"output_format": "dummy"}, "retry_failed"),
    ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, server, given, named):
    urls = write_url_list([{"url": server.url("/img/40x30.jpg")}], tmp_path / "urls.parquet", "parquet")
    flags = {**options(server, tmp_path / "out", "webdataset", []), "incremental_mode": "retry_failed", **given}
    with pytest.raises(ConfigError) as raised:
        download(str(urls), **flags)
    assert named in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_bad_value_in_one_line(tmp_path, server):
    urls = write_url_list([{"url": server.url("/img/40x30.jpg")}], tmp_path / "urls.parquet", "parquet")
    flags = {**options(server, tmp_path / "out", "webdataset", []), "incremental_mode": "retry_failed"}
    result = subprocess.run(
        [*cli(urls, flags), "--retry_failed_reasons", "[]"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("img2dataset-ng: error: retry_failed_reasons must be a non-empty list")


def test_a_url_list_that_is_not_the_folders_is_refused(tmp_path, server, flaky, caplog):
    """Up front by the folder's record; without one (a folder of img2dataset 1.47), shard by shard: a shard
    whose urls differ fails with a clear error, and keeps its files."""
    urls, hosts, first, reference = flaky("basic-webdataset")
    out = copy_of(first, tmp_path / "out")
    table = pq.read_table(urls)
    other = table.set_column(0, "url", pa.array([u.replace("seed=11", "seed=99") for u in table.column(0).to_pylist()]))
    changed = tmp_path / "other.parquet"
    pq.write_table(other, changed)
    flags = options(server, out, "webdataset", hosts, incremental_mode="retry_failed", max_shard_retry=0)
    with pytest.raises(ConfigError, match="another url list"):
        download(str(changed), **flags)

    (out / "_img2dataset_ng_run.json").unlink()
    caplog.set_level(logging.ERROR, logger="img2dataset_ng")
    summary = download(str(changed), **flags)
    assert summary.failed_shards == [1]
    (error,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard 1 failed")]
    assert "row 000011 has url" in error and "the url list is not the one the output folder was made from" in error
    for name in ("00001.tar", "00001.parquet", "00001_stats.json"):
        assert (out / name).read_bytes() == (first / name).read_bytes()
    assert not [name for name in os.listdir(out) if name.startswith("_retry_")]


# --- 5. shards with nothing to retry are neither read nor rewritten -------------------------------------


def test_shards_with_nothing_to_retry_are_not_read_or_rewritten(tmp_path, server):
    tag = f"quiet-{time.monotonic_ns()}"
    hosts = [f"{tag}.test"]
    rows = [{"url": server.url(f"/img/40x30.jpg?seed={i}"), "caption": f"c{i}"} for i in range(3 * PER_SHARD)]
    rows[3]["url"] = server.host_url(hosts[0], f"/flaky/{tag}/1/img/40x30.jpg")  # shard 0: something to retry
    rows[PER_SHARD + 2]["url"] = server.url("/status/404")  # shard 1: a failure not to retry; shard 2: none
    urls = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    out = tmp_path / "out"
    download(str(urls), **options(server, out, "webdataset", hosts))
    quiet = [p for p in out.iterdir() if p.name.startswith(("00001", "00002"))]
    for path in quiet:  # were they read, the retry would fail on them
        if not path.name.endswith("_stats.json"):
            path.write_bytes(b"not a shard")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))

    summary = download(str(urls), **options(server, out, "webdataset", hosts, incremental_mode="retry_failed"))
    assert (summary.shards_done, summary.shards_skipped, summary.failed_shards) == (1, 2, [])
    assert summary.successes == PER_SHARD
    for path in quiet:
        assert path.stat().st_mtime_ns == 1_000_000_000, path.name
        assert path.name.endswith("_stats.json") or path.read_bytes() == b"not a shard"


# --- 6. on an object store (S3) ------------------------------------------------------------------------


@pytest.mark.parametrize("output_format, finished_by", [("webdataset", "a second attempt"), ("files", "the next run")])
def test_retry_on_s3_when_a_move_fails_half_way(
    tmp_path, server, flaky, request, monkeypatch, output_format, finished_by
):
    """On S3 a move is a copy then a delete. The retry's first shard fails in the middle of its moves, its
    commit record written. Its second attempt (max_shard_retry) finishes them first and retries again; or,
    as after a kill (nothing finishes them in that run), the next run finishes them before anything else."""
    endpoint, fs = request.getfixturevalue("s3")
    urls, hosts, first, reference = flaky(f"s3-{output_format}", output_format, n=20)
    prefix = fresh_prefix(fs, f"retry-{output_format}")
    fs.put(str(first), prefix, recursive=True)
    flags = options(
        server,
        f"s3://{prefix}",
        output_format,
        hosts,
        incremental_mode="retry_failed",
        storage_options={"endpoint_url": endpoint},
    )
    move_many, failed = storage.Folder.move_many, []

    def fails_half_way_once(self, pairs):
        pairs = list(pairs)
        if len(pairs) > 1 and not failed:
            failed.append(pairs)
            move_many(self, pairs[: len(pairs) // 2])
            raise OSError("the network went away")
        move_many(self, pairs)

    monkeypatch.setattr(storage.Folder, "move_many", fails_half_way_once)
    if finished_by == "the next run":
        monkeypatch.setattr(retry, "recover", lambda folder, names: False)
        summary = download(str(urls), **{**flags, "max_shard_retry": 0})
        assert summary.failed_shards == [0] and failed
        fs.invalidate_cache()
        assert fs.exists(f"{prefix}/{retry_record_name('00000')}") and not fs.exists(f"{prefix}/00000_stats.json")
        monkeypatch.undo()
    summary = download(str(urls), **flags)
    assert summary.failed_shards == [] and failed
    assert summary.shards_done == (2 if finished_by == "a second attempt" else 0)
    local = copy_from_s3(fs, prefix, tmp_path / "copy")
    assert_same_output(local, reference, output_format)
    assert not [path for path in fs.ls(prefix) if "_retry_" in path]
