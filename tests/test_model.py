"""model=...: a model run on every stored image, during a download and over existing shards, with
multiprocessing and with Ray, on local disk and on S3 (moto); checked against a plain onnxruntime run.

The models are built here (tests/models.py): a small ONNX CNN with fixed weights, and a numpy-only class.
Stored images are 224 x 224 png (image_size 224, center_crop), so that the model's input is the stored
image itself, normalised: the expected outputs are computed from the tar's images without our code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from img2dataset_ng import download
from img2dataset_ng.errors import ConfigError, StorageError
from img2dataset_ng.stages.model import preprocess
from tests.models import MeanColour, small_cnn
from tests.outputs import read_metadata, read_stats, tar_samples, write_url_list
from tests.test_distributors import kill_first
from tests.test_storage import fetch, fresh_prefix, s3  # noqa: F401 - s3: the S3 server fixture

onnxruntime = pytest.importorskip("onnxruntime")
ray = pytest.importorskip("ray")

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
PER_SHARD = 4
# what every run stores: 224 x 224 png, so the model sees the stored pixels as they are
STORED = {"image_size": 224, "resize_mode": "center_crop", "encode_format": "png", "thread_count": 4}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return small_cnn(tmp_path_factory.mktemp("model") / "small.onnx")


def image_urls(server, count: int = 8, slow: float = 0) -> list[str]:
    """Images of several sizes and formats, an undecodable one and a 404 among them."""
    urls = [
        server.url(f"/img/{300 + 37 * i}x{200 + 23 * (i % 3)}.{'jpg' if i % 2 else 'png'}?seed={i}")
        for i in range(count)
    ]
    urls[2] = server.url("/corrupt.jpg")
    if count > 5:
        urls[5] = server.url("/status/404")
    return [server.url(f"/slow/{slow}{url.split(server.base, 1)[1]}") if slow else url for url in urls]


def url_list(tmp_path: Path, urls: list[str]) -> Path:
    return write_url_list([{"url": url} for url in urls], tmp_path / "urls.parquet", "parquet")


def expected_outputs(model: Path, images: list[bytes]) -> np.ndarray:
    """A plain onnxruntime run on the stored 224 x 224 images: RGB in [0, 1], ImageNet mean/std, NCHW."""
    import cv2

    pixels = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in images]
    batch = np.stack([((p[:, :, ::-1] / 255.0 - MEAN) / STD).transpose(2, 0, 1) for p in pixels]).astype(np.float32)
    return onnxruntime.InferenceSession(str(model)).run(["embedding"], {"pixels": batch})[0]


def embeddings(folder: Path) -> dict[str, tuple[str, list[float] | None]]:
    """{key: (status, embedding)} from the metadata parquet files."""
    rows = read_metadata(folder).to_pylist()
    return {row["key"]: (row["status"], row["embedding"]) for row in rows}


def check_against_onnxruntime(folder: Path, model: Path) -> None:
    """Every success's stored output is the plain onnxruntime output of its stored image, to 1e-5."""
    images = {}
    for tar in sorted(folder.glob("*.tar")):
        images.update({key: files["png"] for key, files in tar_samples(tar)[1].items()})
    got = embeddings(folder)
    successes = sorted(key for key, (status, _) in got.items() if status == "success")
    assert successes == sorted(images) and len(successes) >= 4
    expected = expected_outputs(model, [images[key] for key in successes])
    np.testing.assert_allclose(np.array([got[key][1] for key in successes]), expected, atol=1e-5, rtol=0)


def check_npy(folder: Path) -> None:
    """Each shard's .npy is its parquet, row for row: the same values, NaN where there is no output."""
    for parquet in sorted(folder.glob("*.parquet")):
        import pyarrow.parquet as pq

        rows = pq.read_table(parquet).to_pylist()
        array = np.load(parquet.with_suffix(".npy"))
        assert array.shape == (len(rows), 8) and array.dtype == np.float32
        for row, values in zip(rows, array):
            if row["embedding"] is None:
                assert row["status"] != "success" and np.isnan(values).all()
            else:
                np.testing.assert_array_equal(values, np.array(row["embedding"], np.float32))


def same_outputs(folder: Path, reference: dict[str, tuple[str, list[float] | None]]) -> None:
    got = embeddings(folder)
    assert {key: status for key, (status, _) in got.items()} == {key: status for key, (status, _) in reference.items()}
    for key, (_, values) in reference.items():
        if values is None:
            assert got[key][1] is None
        else:
            np.testing.assert_allclose(got[key][1], values, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def first(tmp_path_factory, server, model_file) -> Path:
    """A download with the model (multiprocessing, local): webdataset shards with embeddings and .npy files."""
    tmp = tmp_path_factory.mktemp("first")
    download(
        str(url_list(tmp, image_urls(server))),
        input_format="parquet",
        output_folder=str(tmp / "out"),
        output_format="webdataset",
        number_sample_per_shard=PER_SHARD,
        processes_count=2,
        model=str(model_file),
        model_batch_size=3,
        model_save_npy=True,
        **STORED,
    )
    return tmp / "out"


def test_a_download_stores_what_onnxruntime_computes(first, model_file):
    check_against_onnxruntime(first, model_file)
    check_npy(first)
    got = embeddings(first)
    assert got["000002"][0] == "failed_to_resize" and got["000002"][1] is None  # the undecodable image
    assert got["000011"][0] == "failed_to_download" and got["000011"][1] is None  # the 404
    rows = {row["key"]: row for row in read_metadata(first).to_pylist()}
    assert rows["000002"]["error_message"] == "Image decoding error"
    _, members = tar_samples(first / "00000.tar")  # the per-sample JSON holds the output as numbers
    assert json.loads(members["000000"]["json"])["embedding"] == pytest.approx(got["000000"][1], abs=1e-6)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    for stats in read_stats(first).values():
        assert stats["model"] == {
            "name": "small.onnx",
            "sha256": digest,
            "column": "embedding",
            "dim": 8,
            "output": "embedding",
        }


def test_over_existing_shards_the_outputs_are_the_same(first, tmp_path, model_file):
    summary = download(
        str(first),
        input_format="webdataset",
        output_folder=str(tmp_path / "again"),
        output_format="metadata",  # the images stay where they are: only NNNNN.parquet (and .npy)
        resize_mode="no",
        encode_format="png",
        skip_reencode=True,
        processes_count=2,
        model=str(model_file),
        model_save_npy=True,
    )
    assert summary.shards_done == 2 and summary.successes == 6
    assert sorted(p.name for p in (tmp_path / "again").iterdir() if not p.name.startswith(("_", "wids"))) == [
        "00000.npy", "00000.parquet", "00000_stats.json", "00001.npy", "00001.parquet", "00001_stats.json",
    ]  # fmt: skip
    same_outputs(tmp_path / "again", embeddings(first))
    check_npy(tmp_path / "again")
    (tmp_path / "again" / "00001.npy").unlink()  # a shard without its .npy is not done
    summary = download(str(first), input_format="webdataset", output_folder=str(tmp_path / "again"),
                       output_format="metadata", resize_mode="no", encode_format="png", skip_reencode=True,
                       processes_count=1, model=str(model_file), model_save_npy=True)  # fmt: skip
    assert (summary.shards_done, summary.shards_skipped) == (1, 1)
    check_npy(tmp_path / "again")


def test_preprocess_resizes_the_shorter_side_and_crops_the_center():
    left, right = (10, 20, 30), (200, 150, 100)  # BGR
    pixels = np.zeros((300, 600, 3), np.uint8)
    pixels[:, :300], pixels[:, 300:] = left, right
    out = preprocess(pixels, 100)  # 300 x 600 -> 100 x 200, then the middle 100 x 100
    assert out.shape == (3, 100, 100) and out.dtype == np.float32
    expected_left = (np.array(left[::-1]) / 255 - MEAN) / STD
    np.testing.assert_allclose(out[:, 50, 10], expected_left, atol=1e-5)  # left half of the crop
    np.testing.assert_allclose(out[:, 50, 90], (np.array(right[::-1]) / 255 - MEAN) / STD, atol=1e-5)
    nhwc = preprocess(pixels, 100, mean=(0, 0, 0), std=(1, 1, 1), layout="NHWC")
    assert nhwc.shape == (100, 100, 3)
    np.testing.assert_allclose(nhwc[50, 10], np.array(left[::-1]) / 255, atol=1e-6)
    thin = np.zeros((4, 40000, 3), np.uint8)  # only the center square is resized: 4 x 4 pixels, not 224 x 2.24M
    thin[:, 19998:20002] = left
    np.testing.assert_allclose(preprocess(thin, 224)[:, 100, 100], expected_left, atol=1e-5)
    transparent = np.zeros((10, 10, 4), np.uint8)  # alpha 0: white
    np.testing.assert_allclose(preprocess(transparent, 10, (0, 0, 0), (1, 1, 1))[:, 5, 5], [1, 1, 1], atol=1e-6)


def test_a_python_class_stands_in_for_onnx(tmp_path, server):
    download(
        str(url_list(tmp_path, image_urls(server, count=4))),
        input_format="parquet",
        output_folder=str(tmp_path / "out"),
        output_format="webdataset",
        processes_count=1,
        model="tests.models:MeanColour",
        model_column="colour",
        model_mean=[0, 0, 0],
        model_std=[1, 1, 1],
        **STORED,
    )
    import cv2

    rows = read_metadata(tmp_path / "out").to_pylist()
    _, images = tar_samples(tmp_path / "out" / "00000.tar")
    assert [row["status"] for row in rows] == ["success", "success", "failed_to_resize", "success"]
    for row in rows:
        if row["status"] == "success":
            rgb = cv2.imdecode(np.frombuffer(images[row["key"]]["png"], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] / 255
            expected = MeanColour()(rgb.transpose(2, 0, 1)[None].astype(np.float32))[0]
            np.testing.assert_allclose(row["colour"], expected, atol=1e-5)
    stats = next(iter(read_stats(tmp_path / "out").values()))
    source = Path(sys.modules["tests.models"].__file__).read_bytes()
    assert stats["model"]["name"] == "tests.models:MeanColour"
    assert stats["model"]["sha256"] == hashlib.sha256(source).hexdigest() and stats["model"]["dim"] == 6


def test_an_image_the_model_stage_cannot_decode_fails_alone(tmp_path, model_file):
    """With disable_all_reencoding nothing decodes before the model: its stage fails the bad image itself."""
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((240, 260, 3), 60 * i, np.uint8))
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    download(
        str(folder),
        input_format="image_folder",
        output_folder=str(tmp_path / "out"),
        output_format="metadata",
        disable_all_reencoding=True,
        processes_count=1,
        model=str(model_file),
    )
    rows = read_metadata(tmp_path / "out").to_pylist()
    assert [row["status"] for row in rows] == ["success"] * 3 + ["failed_to_resize"]
    assert rows[3]["error_message"].startswith("model input: ") and rows[3]["embedding"] is None
    assert all(len(row["embedding"]) == 8 for row in rows[:3])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "/nowhere/m.onnx"}, "cannot read model /nowhere/m.onnx"),
        ({"model": "no_such_module_here:Model"}, "cannot be imported"),
        ({"model": "m.txt"}, "must be the path or url of an .onnx file, or module:Class"),
        ({"model": "TMP/m.txt"}, "onnxruntime cannot load it: [ONNXRuntimeError]"),
        ({"model_output": "logits"}, "model_output 'logits' is not an output of the model"),
        ({"model_column": "status"}, "a stage adds a column 'status'"),
        ({"model_mean": [0.5, 0.5]}, "model_mean must be three numbers"),
        ({"model_input_size": 7, "model_layout": "NHWC"}, "fails on a blank 7x7x3 input"),
    ],
)
def test_bad_model_options_fail_before_any_work(tmp_path, model_file, options, message):
    (tmp_path / "m.txt").write_text("not a model")
    options = {"model": str(model_file), **options}
    options["model"] = options["model"].replace("TMP", str(tmp_path))
    with pytest.raises((ConfigError, StorageError), match=re.escape(message)):
        download(str(tmp_path / "nothing.txt"), output_folder=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()


def test_another_model_into_the_same_folder_is_refused(first, tmp_path, model_file):
    """`first`'s command again with a model of the same name but other weights: its shards would be skipped
    as done, with the other model's outputs."""
    command = {"url_list": str(first.parent / "urls.parquet"), "input_format": "parquet", "output_folder": str(first),
               "output_format": "webdataset", "number_sample_per_shard": PER_SHARD, "model_batch_size": 3,
               "model_save_npy": True, **STORED}  # fmt: skip
    with pytest.raises(ConfigError, match="model_sha256"):
        download(model=str(small_cnn(tmp_path / "small.onnx", seed=1)), **command)
    (tmp_path / "elsewhere").mkdir()  # the same model under another path is the same model: nothing to do
    same = tmp_path / "elsewhere" / "small.onnx"
    same.write_bytes(model_file.read_bytes())
    assert download(model=str(same), **command).shards_skipped == 2


# --- every place it runs: multiprocessing and Ray, local disk and S3 ------------------------------------


@pytest.fixture(scope="module")
def s3_store(request) -> tuple[object, dict[str, str]]:
    """moto's filesystem, and storage options that reach it from any process (Ray's workers do not have
    this process's environment)."""
    endpoint, fs = request.getfixturevalue("s3")
    return fs, {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}


def place(where: str, tmp_path: Path, fs, name: str) -> str:
    return str(tmp_path / name) if where == "local" else f"s3://{fresh_prefix(fs, name)}"


def local_copy(url: str, fs, tmp_path: Path) -> Path:
    """An output folder as a local folder (an S3 one is copied here)."""
    if not url.startswith("s3://"):
        return Path(url)
    return fetch(fs, url[len("s3://") :], tmp_path / f"copy-{url.rsplit('/', 1)[-1]}")


@pytest.mark.parametrize(("source", "target"), [("local", "local"), ("local", "s3"), ("s3", "local"), ("s3", "s3")])
@pytest.mark.parametrize("distributor", ["multiprocessing", "ray"])
def test_every_distributor_and_storage(tmp_path, server, first, model_file, s3_store, ray_head, monkeypatch,
                                       distributor, source, target):  # fmt: skip
    """A download from `source` to `target`, then its shards from `target` back to `source`: the outputs of
    `first` both times (between them, every local/S3 combination of input and output is run)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    fs, storage_options = s3_store
    model, urls = str(model_file), str(url_list(tmp_path, image_urls(server)))
    if source == "s3":
        model, list_folder = place("s3", tmp_path, fs, "model") + "/small.onnx", place("s3", tmp_path, fs, "urls")
        fs.put(str(model_file), model[len("s3://") :])
        fs.put(urls, list_folder[len("s3://") :] + "/urls.parquet")
        urls = list_folder
    common = {"distributor": distributor, "storage_options": storage_options, "model": model, "processes_count": 1}
    out = place(target, tmp_path, fs, "out")
    shards = {"output_format": "webdataset", "number_sample_per_shard": PER_SHARD, "model_save_npy": True}
    download(urls, input_format="parquet", output_folder=out, model_batch_size=3, **shards, **STORED, **common)
    copied = local_copy(out, fs, tmp_path)
    same_outputs(copied, embeddings(first))
    check_npy(copied)
    again = place(source, tmp_path, fs, "again")
    download(out, input_format="webdataset", output_folder=again, output_format="metadata", resize_mode="no",
             skip_reencode=True, encode_format="png", **common)  # fmt: skip
    same_outputs(local_copy(again, fs, tmp_path), embeddings(first))
    assert not ray.is_initialized()


def test_a_killed_model_actor_costs_time_not_output(tmp_path, server, model_file, ray_head, monkeypatch):
    """Ray restarts the model's actor and tries its calls again: the output is the same. 4 shards on a
    2-CPU cluster: shard tasks wait for a CPU when the actor dies, and must not take the one it frees (the
    running shards would wait on the actor for ever)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    killer = kill_first("ray::_ModelActor", tmp_path / "out")
    download(str(url_list(tmp_path, image_urls(server, count=16, slow=0.3))), input_format="parquet",
             output_folder=str(tmp_path / "out"), output_format="webdataset", number_sample_per_shard=PER_SHARD,
             distributor="ray", model=str(model_file), model_batch_size=3, **STORED)  # fmt: skip
    killer.join(1)
    assert killer.killed is not None, "no model actor was killed"
    rows = read_metadata(tmp_path / "out").to_pylist()
    assert len(rows) == 16 and [row["status"] for row in rows].count("success") == 14
    check_against_onnxruntime(tmp_path / "out", model_file)


def test_a_run_killed_with_sigkill_is_finished_by_the_same_command(tmp_path, server, model_file):
    urls = url_list(tmp_path, image_urls(server, count=16, slow=0.3))
    command = [sys.executable, "-m", "img2dataset_ng", "--url_list", str(urls), "--input_format", "parquet",
               "--output_folder", str(tmp_path / "out"), "--output_format", "webdataset",
               "--number_sample_per_shard", str(PER_SHARD), "--processes_count", "2", "--model", str(model_file),
               "--model_batch_size", "3", "--model_save_npy", "True", "--progress", "False"]  # fmt: skip
    command += [f"--{name}={value}" for name, value in STORED.items()]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "out").glob("*_stats.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert 2 <= len(list((tmp_path / "out").glob("*_stats.json"))) < 4, "the kill did not land halfway"
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    rows = read_metadata(tmp_path / "out").to_pylist()
    assert len(rows) == 16 and len({row["key"] for row in rows}) == 16
    assert [row["status"] for row in rows].count("success") == 14  # all but the undecodable image and the 404
    check_against_onnxruntime(tmp_path / "out", model_file)
    check_npy(tmp_path / "out")


def test_a_model_pool_the_cluster_cannot_place_is_refused(tmp_path, model_file, ray_head, monkeypatch):
    """Actors that could never start would leave the shards waiting for ever (the cluster: 2 CPUs, no GPU)."""
    from img2dataset_ng.config import Config
    from img2dataset_ng.distributors.ray import RayDistributor

    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    distributor = RayDistributor(2)
    try:
        for options, message in [
            ({"model_num_gpus": 1}, "model_num_gpus=1, but the Ray cluster has 0 GPU(s)"),
            ({"model_pool_size": 2}, "model_pool_size=2: the Ray cluster (2 CPUs, 0 GPUs) fits 1 model actor(s)"),
        ]:
            config = Config.from_options(url_list="-", model=str(model_file), **options)
            with pytest.raises(ConfigError, match=re.escape(message)):
                distributor.model_pool(config.model)
        pool = distributor.model_pool(Config.from_options(url_list="-", model=str(model_file)).model)
        assert len(pool.actors) == 1 and pool(np.zeros((2, 3, 224, 224), np.float32)).shape == (2, 8)
        ray.kill(pool.actors[0], no_restart=True)  # dead for good: calls fail, they do not wait
        with pytest.raises(RuntimeError, match="every model actor died"):
            pool(np.zeros((2, 3, 224, 224), np.float32))
    finally:
        distributor.close()
    assert not ray.is_initialized()


def test_a_model_file_changed_during_the_run_fails_its_shards(tmp_path):
    """The run's shards all have the model its stats name: a worker that finds another file refuses it."""
    from img2dataset_ng.config import Config
    from img2dataset_ng.stages import model

    path = small_cnn(tmp_path / "m.onnx")
    config = model.resolve(Config.from_options(url_list="-", model=str(path)))
    small_cnn(path, seed=1)  # replaced before a worker loads it
    with pytest.raises(ConfigError, match="changed since the run started"):
        model.load(config.model)


def test_weights_beside_the_onnx_file_are_read_and_hashed_from_disk_and_s3(tmp_path, model_file, monkeypatch, request):
    """torch.onnx.export keeps the weights in NAME.onnx.data: read from beside the model wherever it is."""
    from img2dataset_ng.config import Config
    from img2dataset_ng.stages import model

    endpoint, fs = request.getfixturevalue("s3")
    path = small_cnn(tmp_path / "apart.onnx", external=True)
    digest = hashlib.sha256(path.read_bytes() + (tmp_path / "apart.onnx.data").read_bytes()).hexdigest()
    prefix = fresh_prefix(fs, "apart")
    fs.put(str(path), f"{prefix}/apart.onnx")
    fs.put(str(tmp_path / "apart.onnx.data"), f"{prefix}/apart.onnx.data")
    monkeypatch.chdir("/")  # not where the model is
    batch = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(model_file)).run(["embedding"], {"pixels": batch})[0]
    for url in (str(path), f"s3://{prefix}/apart.onnx"):
        config = Config.from_options(url_list="-", model=url, storage_options={"endpoint_url": endpoint})
        resolved = model.resolve(config).model
        assert resolved.info.sha256 == digest and resolved.info.dim == 8
        np.testing.assert_allclose(model.run_batch(model.load(resolved)[0], batch), expected, atol=1e-6)


def test_the_embeddings_example_runs_over_shards(first, tmp_path, model_file):
    script = Path(__file__).resolve().parents[1] / "examples" / "embeddings.py"
    command = [sys.executable, str(script), "--model", str(model_file), "--shards", str(first), "--output"]
    result = subprocess.run([*command, str(tmp_path / "emb")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embeddings: 8 rows x 8 values (float32)" in result.stdout
    assert "6 rows with an embedding, 2 without" in result.stdout
    same_outputs(tmp_path / "emb", embeddings(first))


def test_outputs_are_numbers_in_the_per_sample_json_and_tfrecord():
    """The stage keeps each output as a float32 array (4 bytes a value); the writers store its numbers."""
    from img2dataset_ng.writers.codecs.tfrecord import feature_of, float_feature
    from img2dataset_ng.writers.webdataset import sample_json

    output = np.array([1.5, -0.25, 3.0], np.float32)
    assert feature_of(output) == float_feature([1.5, -0.25, 3.0])
    assert json.loads(sample_json({"key": "0", "embedding": output})) == {"key": "0", "embedding": [1.5, -0.25, 3.0]}
