"""The examples run as a user runs them, against the local image server, and produce what they say.

`examples/simple_example.py` and `examples/ray_example.py` run as scripts (subprocesses);
`examples/databricks.ipynb` runs top to bottom in a Jupyter kernel of this interpreter, on a local
Spark, with URL_LIST / OUTPUT_FOLDER pointing at temporary paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.outputs import image_size, read_metadata, read_stats, tar_samples, write_url_list

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IMAGES = 10  # urls of real images in each list, plus one that fails with 404


def url_rows(server, n: int = IMAGES) -> list[dict[str, str]]:
    rows = [{"url": server.url(f"/img/64x48.jpg?seed={i}"), "caption": f"caption {i}"} for i in range(n)]
    rows.insert(n // 2, {"url": server.url("/status/404"), "caption": "missing"})
    return rows


def run_script(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result


def check_webdataset(folder: Path, rows: list[dict[str, str]], captions: bool, image_side: int = 256) -> None:
    """One metadata row per url, every image in the tars, 404 reported as such."""
    table = read_metadata(folder)
    assert table.num_rows == len(rows)
    assert sorted(table.column("url").to_pylist()) == sorted(row["url"] for row in rows)
    statuses = dict(zip(table.column("url").to_pylist(), table.column("status").to_pylist()))
    assert sum(status == "success" for status in statuses.values()) == len(rows) - 1
    failed = [(row["status"], row["error_message"]) for row in table.to_pylist() if row["status"] != "success"]
    assert failed == [("failed_to_download", "HTTP Error 404: Not Found")]
    assert ("caption" in table.column_names) == captions

    successes = {row["key"]: row for row in table.to_pylist() if row["status"] == "success"}
    samples = {}
    for tar in sorted(folder.glob("*.tar")):
        assert tarfile.is_tarfile(tar)
        samples.update(tar_samples(tar)[1])
    assert sorted(samples) == sorted(successes)
    for key, members in samples.items():
        assert sorted(members) == (["jpg", "json", "txt"] if captions else ["jpg", "json"])
        assert image_size(members["jpg"]) == (image_side, image_side)  # 64x48, border mode
        assert json.loads(members["json"])["url"] == successes[key]["url"]
        if captions:
            assert members["txt"].decode() == successes[key]["caption"]
    stats = read_stats(folder)
    assert sum(s["count"] for s in stats.values()) == len(rows)
    assert sum(s["successes"] for s in stats.values()) == len(rows) - 1


@pytest.mark.parametrize("input_format", ["txt", "parquet"])
def test_simple_example(tmp_path, server, input_format):
    rows = url_rows(server)
    urls = write_url_list(rows, tmp_path / f"urls.{input_format}", input_format)
    result = run_script("simple_example.py", str(urls), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{IMAGES} of {IMAGES + 1} images downloaded" in result.stdout
    assert "HTTP Error 404: Not Found" in result.stdout
    check_webdataset(tmp_path / "out", rows, captions=input_format == "parquet")  # txt holds urls only

    # run again: the shard is done, nothing is downloaded twice
    again = run_script("simple_example.py", str(urls), str(tmp_path / "out"), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 of 0 images downloaded" in again.stdout


def test_simple_example_defaults_and_bad_arguments(tmp_path, server):
    rows = url_rows(server, n=3)
    write_url_list(rows, tmp_path / "urls.txt", "txt")  # the default url list, in the working directory
    result = run_script("simple_example.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    check_webdataset(tmp_path / "simple_output", rows, captions=False)

    missing = run_script("simple_example.py", str(tmp_path / "nope.txt"), str(tmp_path / "x"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    usage = run_script("simple_example.py", "--help", cwd=tmp_path)
    assert usage.returncode == 2 and "URL_LIST" in usage.stdout


def test_ray_example_starts_a_local_ray(tmp_path, server):
    rows = url_rows(server)
    urls = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "ray_example.py"), str(urls), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 node(s)" in result.stdout
    check_webdataset(tmp_path / "out", rows, captions=True)


def test_ray_example_on_a_running_cluster(tmp_path, server, ray_head):
    rows = url_rows(server)
    urls = write_url_list(rows, tmp_path / "urls.txt", "txt")
    result = run_script("ray_example.py", str(urls), str(tmp_path / "out"), cwd=tmp_path, env={"RAY_ADDRESS": ray_head})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ray cluster with 2 CPUs" in result.stdout
    check_webdataset(tmp_path / "out", rows, captions=False)


def kernel_spec(folder: Path, env: dict[str, str]) -> str:
    """A Jupyter kernel of this interpreter (the venv's), in a JUPYTER_PATH of its own; returns its name."""
    name = "img2dataset-ng-test"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "img2dataset-ng tests",
                "language": "python",
                "env": env,
            }
        )
    )
    return name


def test_databricks_notebook_runs_on_local_spark(tmp_path, server, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("pyspark")
    rows = url_rows(server)
    urls = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    output = tmp_path / "out"
    jupyter = tmp_path / "jupyter"
    name = kernel_spec(
        jupyter,
        {
            "URL_LIST": str(urls),
            "OUTPUT_FOLDER": str(output),
            "NUMBER_SAMPLE_PER_SHARD": "4",
            "IPYTHONDIR": str(jupyter),
            # Spark options the notebook leaves unset, for the local Spark it starts (pyspark reads
            # PYSPARK_SUBMIT_ARGS): the JIT compiles with C1 only (a JVM that lives for seconds spends
            # more CPU in C2 compiles than they give back: ~32 -> ~19 CPU seconds for this notebook's
            # JVM), and no web UI.
            "PYSPARK_SUBMIT_ARGS": "--driver-java-options=-XX:TieredStopAtLevel=1 --conf spark.ui.enabled=false "
            "pyspark-shell",
        },
    )
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)

    notebook = nbformat.read(EXAMPLES / "databricks.ipynb", as_version=4)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)
    client = nbclient.NotebookClient(
        notebook, kernel_name=name, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, when a cell fails

    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert f"status counts: {{'failed_to_download': 1, 'success': {IMAGES}}}" in printed
    assert "spark.speculation: false" in printed
    assert sorted(p.name for p in output.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    check_webdataset(output, rows, captions=True)
