"""The extension points as a user sees them: a stage, a batch stage and a writer defined here, outside
the package, registered through the public contract, and run in real downloads (worker
processes, which import them from this module)."""

from __future__ import annotations

import base64
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import (
    BatchStage,
    ConfigError,
    Sample,
    ShardWriter,
    Stage,
    StageError,
    download,
    register_stage,
    register_writer,
)
from img2dataset_ng.distributors.base import DISTRIBUTORS
from img2dataset_ng.stages.base import STAGES
from img2dataset_ng.writers.base import WRITERS
from tests.outputs import write_url_list

MIN_WIDTH = 50


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


class Brightness(Stage):
    """The stored image's mean brightness; images narrower than MIN_WIDTH fail."""

    def __init__(self, config):
        self.encode_format = config.resize.encode_format.value

    def columns(self) -> list[pa.Field]:
        return [pa.field("brightness", pa.float64())]

    def __call__(self, sample: Sample) -> None:
        img = decode(sample.data)
        if img.shape[1] < MIN_WIDTH:
            raise StageError(f"narrower than {MIN_WIDTH} px")
        sample.fields["brightness"] = float(img.mean())


class JsonLinesWriter(ShardWriter):
    """`NNNNN.jsonl`: one line per sample, its metadata row and, for a success, the image in base64."""

    suffixes = (".jsonl",)

    def __init__(self, folder, shard_name, schema, image_format):
        super().__init__(folder, shard_name, schema, image_format)
        self.lines: list[str] = []

    def write(self, sample: Sample) -> None:
        row = self.record(sample)
        if sample.ok:
            row["image"] = base64.b64encode(sample.data).decode()
        self.lines.append(json.dumps(row))

    def close(self) -> None:
        self.folder.write(f"{self.shard_name}.jsonl", "".join(line + "\n" for line in self.lines).encode())

    def abort(self) -> None:
        self.lines = []


class BatchedChannelMeans(BatchStage):
    """Per-channel means computed for a whole batch at once; each sample also records its batch's size."""

    batch_size = 4
    linger = 0.2

    def columns(self) -> list[pa.Field]:
        return [pa.field("channel_means", pa.list_(pa.float64(), 3)), pa.field("batch", pa.int32())]

    def prepare(self, sample: Sample) -> np.ndarray:
        img = decode(sample.data)
        if img.shape[1] < MIN_WIDTH:  # this sample alone fails, before its batch
            raise StageError("too narrow for the model")
        return cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float64)

    def process_batch(self, samples, prepared) -> None:
        means = np.stack(prepared).mean(axis=(1, 2))  # one call for the whole batch, as a model would
        for sample, mean in zip(samples, means):
            sample.fields["channel_means"] = mean.tolist()
            sample.fields["batch"] = len(samples)


register_stage("brightness", Brightness)
register_writer("jsonl", JsonLinesWriter)


def url_list(tmp_path: Path, server) -> Path:
    widths = [30, 60, 80, 45, 100, 70, 90, 40, 120, 64, 75, 33]
    rows = [{"url": server.url(f"/img/{w}x40.jpg?seed={i}")} for i, w in enumerate(widths)]
    rows.insert(5, {"url": server.url("/status/404")})
    return write_url_list(rows, tmp_path / "urls.parquet", "parquet")


def read_jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_a_registered_stage_and_writer_run_in_a_download(tmp_path, server):
    summary = download(
        str(url_list(tmp_path, server)),
        input_format="parquet",
        output_folder=str(tmp_path / "out"),
        output_format="jsonl",
        resize_mode="no",
        stages=["brightness"],
        number_sample_per_shard=5,
        processes_count=2,
        thread_count=4,
    )
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.jsonl",
        "00000_stats.json",
        "00001.jsonl",
        "00001_stats.json",
        "00002.jsonl",
        "00002_stats.json",
        "_img2dataset_ng_run.json",
    ]
    rows = read_jsonl(out)
    assert len(rows) == 13 and summary.count == 13
    first_success = next(row for row in rows if row["status"] == "success")
    assert list(first_success)[:4] == ["url", "key", "status", "error_message"]
    assert list(first_success)[-3:] == ["sha256", "brightness", "image"]  # the stage's column after the built-ins
    for row in rows:
        width = int(row["url"].split("/img/")[1].split("x")[0]) if "/img/" in row["url"] else None
        if width is None:
            assert (row["status"], row["brightness"]) == ("failed_to_download", None)
        elif width < MIN_WIDTH:
            assert (row["status"], row["error_message"]) == ("failed_to_resize", f"narrower than {MIN_WIDTH} px")
            assert row["brightness"] is None and "image" not in row
        else:
            image = decode(base64.b64decode(row["image"]))
            assert row["status"] == "success" and image.shape[1] == width
            assert row["brightness"] == pytest.approx(float(image.mean()))
    assert summary.status_dict[f"narrower than {MIN_WIDTH} px"] == 4 and summary.successes == 8


class EnvironmentValue(Stage):
    """The worker process's value of I2D_TEST_VALUE, for every sample."""

    def __init__(self, config):
        pass

    def columns(self) -> list[pa.Field]:
        return [pa.field("environment_value", pa.string())]

    def __call__(self, sample: Sample) -> None:
        sample.fields["environment_value"] = os.environ.get("I2D_TEST_VALUE")


def test_worker_processes_see_the_environment_of_their_run(tmp_path, server, monkeypatch):
    """Worker processes are forks of a fork server kept from the first run: each run's workers still see the
    caller's environment as it is when that run starts (credentials or proxies set in between)."""
    seen = []
    for value in ("first", "second", None):
        if value is None:
            monkeypatch.delenv("I2D_TEST_VALUE")
        else:
            monkeypatch.setenv("I2D_TEST_VALUE", value)
        out = tmp_path / f"out-{value}"
        download(
            str(url_list(tmp_path, server)),
            input_format="parquet",
            output_folder=str(out),
            output_format="parquet",
            stages=["tests.test_extensions:EnvironmentValue"],
            number_sample_per_shard=5,
            processes_count=2,
        )
        rows = [row for path in sorted(out.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
        assert len(rows) == 13
        seen.append({row["environment_value"] for row in rows if row["status"] == "success"})
    assert seen == [{"first"}, {"second"}, {None}]


class BurnCpu(Stage):
    """Spends 0.4 s of CPU on every sample."""

    def __init__(self, config):
        pass

    def __call__(self, sample: Sample) -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.4:
            pass


def test_the_command_lines_cpu_time_includes_its_workers(tmp_path, server):
    """`time img2dataset-ng ...` (here: the children's rusage of the caller) counts the worker processes' CPU,
    which are children of the fork server: the command line waits for it before it exits."""
    rows = [{"url": server.url(f"/img/{40 + i}x40.jpg")} for i in range(8)]
    urls = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "img2dataset_ng", str(urls), "--input_format", "parquet"]
        + [f"--output_folder={tmp_path / 'out'}", "--stages", "tests.test_extensions:BurnCpu", "--processes_count=2"]
        + ["--number_sample_per_shard=4", "--thread_count=4"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert len(pq.read_table(tmp_path / "out" / "00001.parquet")) == 4
    assert after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime >= 8 * 0.4


def test_a_batch_stage_given_as_a_module_path(tmp_path, server):
    out = tmp_path / "out"
    download(
        str(url_list(tmp_path, server)),
        input_format="parquet",
        output_folder=str(out),
        output_format="parquet",
        resize_mode="no",
        stages=["tests.test_extensions:BatchedChannelMeans"],
        number_sample_per_shard=13,
        thread_count=8,
    )
    table = pq.read_table(out / "00000.parquet")
    assert table.column_names[-3:] == ["channel_means", "batch", "jpg"]
    rows = table.to_pylist()
    batches = [row["batch"] for row in rows if row["status"] == "success"]
    assert len(batches) == 8 and all(1 <= size <= 4 for size in batches)
    for size in set(batches):  # a batch of k samples gives k rows that say k
        assert batches.count(size) % size == 0
    for row in rows:
        if row["status"] == "success":
            expected = cv2.resize(decode(row["jpg"]), (16, 16), interpolation=cv2.INTER_AREA).mean(axis=(0, 1))
            assert row["channel_means"] == pytest.approx(expected.tolist())
        elif "/img/" in row["url"]:
            assert row["error_message"] == "too narrow for the model" and row["channel_means"] is None


def test_a_partial_batch_is_processed_after_linger(tmp_path, server):
    """One thread never fills a batch of 4: each sample goes alone, after `linger`."""
    out = tmp_path / "out"
    rows = [{"url": server.url(f"/img/{60 + i}x40.jpg")} for i in range(3)]
    download(
        str(write_url_list(rows, tmp_path / "urls.parquet", "parquet")),
        input_format="parquet",
        output_folder=str(out),
        output_format="parquet",
        stages=["tests.test_extensions:BatchedChannelMeans"],
        thread_count=1,
    )
    assert pq.read_table(out / "00000.parquet").column("batch").to_pylist() == [1, 1, 1]


class BatchSizes(BatchStage):
    """Records the size of the batch each sample was in."""

    batch_size, linger, max_linger = 4, 0.5, 5.0

    def process_batch(self, samples, prepared) -> None:
        for sample in samples:
            sample.fields["batch"] = len(samples)


def feed(stage: BatchStage, arrivals: list[float]) -> list[int]:
    """Each sample on its own thread, joining `stage` at its time in `arrivals` (seconds from now); the
    size of the batch each was in."""
    samples = [Sample(index, str(index), {}) for index in range(len(arrivals))]
    start = time.monotonic()

    def join(sample: Sample, at: float) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        stage(sample)

    threads = [threading.Thread(target=join, args=pair) for pair in zip(samples, arrivals)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return [sample.fields["batch"] for sample in samples]


def test_samples_that_keep_coming_fill_the_batch():
    """A batch waits while samples keep joining it (every 0.2 s here, within linger), however long that
    takes in all: full batches, not one per linger."""
    assert feed(BatchSizes(), [0.2 * i for i in range(8)]) == [4] * 8


def test_a_batch_that_stops_growing_goes_after_linger_and_a_trickle_after_max_linger():
    stage = BatchSizes()
    started = time.monotonic()
    assert feed(stage, [0, 0.1, 0.2]) == [3] * 3  # nothing after the third: it goes 0.5 s later
    assert 0.6 < time.monotonic() - started < 3
    stage.max_linger = 1.0  # one sample every 0.4 s: the oldest has waited 1 s when the third joins
    assert feed(stage, [0, 0.4, 0.8, 1.2, 1.6, 2.0]) == [3, 3, 3, 3, 3, 3]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stages": ["no-such-stage"]}, "stages must be"),
        ({"stages": ["tests.test_extensions:Nothing"]}, "cannot be imported"),
        ({"output_format": "jsonl2"}, "output_format must be one of files, webdataset, parquet, tfrecord, metadata"),
        ({"stages": ["brightness", "brightness"]}, "a stage adds a column 'brightness' that the metadata already has"),
        ({"stages": ["brightness"], "save_additional_columns": ["brightness"]}, "already has"),
    ],
)
def test_bad_extensions_fail_before_any_work(tmp_path, options, message):
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/x.jpg\n")
    with pytest.raises(ConfigError, match=message):
        download(str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()


def test_the_worked_examples_of_the_architecture_doc_run(tmp_path, server, monkeypatch):
    """The stage, writer and distributor of docs/architecture.md, executed as written, in one download
    (their distributor runs shards in this process, so nothing needs to be importable elsewhere)."""
    import re
    import sys
    import types

    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 3
    module = types.ModuleType("architecture_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for registry in (WRITERS, STAGES, DISTRIBUTORS):  # what the examples register is gone after this test
        monkeypatch.setattr(registry, "registered", dict(registry.registered))
    for block in blocks:
        exec(compile(block, "docs/architecture.md", "exec"), module.__dict__)

    # an upscaled thumbnail is blurry (Laplacian variance ~2), downscaled photos are sharp (~300)
    paths = ["/img/64x64.png", "/img/640x480.jpg", "/img/800x600.jpg", "/status/404"]
    rows = [{"url": server.url(path)} for path in paths]
    summary = download(
        str(write_url_list(rows, tmp_path / "urls.parquet", "parquet")),
        input_format="parquet",
        output_folder=str(tmp_path / "out"),
        output_format="jsonl",
        distributor="threads",
        stages=["sharpness"],
        number_sample_per_shard=2,
    )
    assert summary.shards_done == 2 and summary.count == 4
    lines = read_jsonl(tmp_path / "out")
    assert [(row["status"], row["error_message"]) for row in lines] == [
        ("failed_to_resize", "too blurry"),
        ("success", None),
        ("success", None),
        ("failed_to_download", "HTTP Error 404: Not Found"),
    ]
    assert [row["sharpness"] is not None and row["sharpness"] > 100 for row in lines] == [False, True, True, False]
