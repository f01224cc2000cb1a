"""What a new user runs into, driven through the CLI as a user would: data safety, one-line errors
with documented exit codes, reruns into a folder made differently, and the small things."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from img2dataset_ng import ConfigError, download
from tests.outputs import read_metadata, write_url_list

ROOT = Path(__file__).parents[1]


def cli(*args: str, cwd: Path | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """The command, in a process of its own; `prelude` runs first (to hide a package, say)."""
    code = f"import sys; {prelude}from img2dataset_ng.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=cwd or ROOT
    )


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The run failed with `code` and said so in exactly one line, without a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("img2dataset-ng: error: "), result.stderr
    return lines[0]


def urls(tmp_path: Path, server, n: int = 3, name: str = "urls.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(server.url(f"/img/{40 + i}x30.jpg") + "\n" for i in range(n)))
    return path


# --- 1. data safety ---------------------------------------------------------------------------


def test_overwrite_refuses_when_the_url_list_is_inside_the_output_folder(tmp_path, server):
    out = tmp_path / "out"
    out.mkdir()
    url_list = urls(out, server)
    before = url_list.read_bytes()
    line = one_line_error(cli(str(url_list), "--output_folder", str(out), "--incremental_mode", "overwrite"))
    assert "url_list" in line and "inside output_folder" in line and "overwrite" in line
    assert url_list.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["urls.txt"]


def test_overwrite_of_the_current_folder_is_refused_in_one_line(tmp_path, server):
    urls(tmp_path, server)
    line = one_line_error(cli("urls.txt", "--output_folder", ".", "--incremental_mode", "overwrite", cwd=tmp_path))
    assert "inside output_folder ." in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["urls.txt"]


# --- 3. errors a user can fix: one line, exit code 2 --------------------------------------------


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, server):
    (tmp_path / "a-file").write_text("not a folder")
    line = one_line_error(cli(str(urls(tmp_path, server)), "--output_folder", str(tmp_path / "a-file" / "out")))
    assert "cannot use output_folder" in line and "a-file" in line


def test_s3_without_s3fs_names_what_to_install(tmp_path, server):
    result = cli(
        str(urls(tmp_path, server)), "--output_folder", "s3://bucket/out", prelude="sys.modules['s3fs'] = None; "
    )
    line = one_line_error(result)
    assert "pip install 'img2dataset-ng[s3]'" in line


def test_an_unreachable_s3_endpoint_is_one_line(tmp_path, server):
    pytest.importorskip("s3fs")
    options = '{"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}'
    result = cli(str(urls(tmp_path, server)), "--output_folder", "s3://bucket/out", "--storage_options", options)
    line = one_line_error(result)
    assert "cannot use output_folder s3://bucket/out" in line and "credentials or storage_options" in line


def test_a_failed_start_leaves_no_folder_behind(tmp_path, server):
    out = tmp_path / "out"
    with pytest.raises(ConfigError):
        download(str(urls(tmp_path, server)), output_folder=str(out), distributor="tests.test_user_errors:no_engine")
    assert not out.exists()


def no_engine(run_config):
    raise ConfigError("this engine cannot start")


# --- 5. resuming the wrong run ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (["--output_format", "webdataset"], "output_format was 'files', now 'webdataset'"),
        (["--number_sample_per_shard", "3"], "number_sample_per_shard was 2, now 3"),
        (["--url_list", "other"], "another url list"),
    ],
)
def test_a_rerun_that_does_not_match_the_folder_is_refused(tmp_path, server, change, message):
    first, other = urls(tmp_path, server, 4), urls(tmp_path, server, 5, "other.txt")
    out = str(tmp_path / "out")
    base = ["--output_folder", out, "--number_sample_per_shard", "2", "--thread_count", "2"]
    assert cli(str(first), *base).returncode == 0
    args = [str(first), *base, *change]
    if change[0] == "--url_list":
        args = [str(other), *base]
    line = one_line_error(cli(*args))
    assert message in line and "incremental_mode" in line
    assert cli(str(first), *base, "--timeout", "5").returncode == 0  # network options may change
    if change[0] == "--url_list":  # extend adds another list's shards after the existing ones
        assert cli(str(other), *base, "--incremental_mode", "extend").returncode == 0
        assert read_metadata(tmp_path / "out").num_rows == 9


# --- 6. small things ----------------------------------------------------------------------------


def test_version_and_a_misspelt_flag():
    version = cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"img2dataset-ng \d+\.\d+\.\d+\n", version.stdout)
    line = one_line_error(cli("urls.txt", "--image_sise", "64"))
    assert "unknown option --image_sise; did you mean --image_size?" in line


def test_help_gives_one_default_per_option():
    from img2dataset_ng.options import OPTIONS

    out = cli("--help").stdout
    blocks = [b for b in re.split(r"\n(?=  -)", out.split("options:", 1)[1]) if b.strip().startswith("--")]
    blocks = [b for b in blocks if not b.strip().startswith("--version")]
    assert len(blocks) == len(OPTIONS)
    assert [b.split()[0] for b in blocks if b.count("(default:") != 1] == []


def test_the_user_guide_documents_every_option_in_signature_order():
    from img2dataset_ng.options import OPTIONS

    guide = (ROOT / "docs" / "user_guide.md").read_text()
    table = guide.split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert documented == [option.name for option in OPTIONS]


def test_an_empty_url_list_warns_and_does_not_hold_the_folder(tmp_path, server):
    (tmp_path / "empty.txt").write_text("\n")
    result = cli(str(tmp_path / "empty.txt"), "--output_folder", str(tmp_path / "out"))
    assert result.returncode == 0 and "WARNING" in result.stderr and "no url found" in result.stderr
    # nothing was made there: another url list may use the folder
    assert cli(str(urls(tmp_path, server)), "--output_folder", str(tmp_path / "out")).returncode == 0
    assert read_metadata(tmp_path / "out").num_rows == 3


def test_the_readme_snippet_runs_as_a_script(tmp_path, server):
    snippet = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    rows = [{"url": server.url(f"/img/{40 + i}x30.jpg"), "caption": f"c{i}"} for i in range(3)]
    write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    (tmp_path / "script.py").write_text(snippet)
    result = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3 successes" in result.stdout and (tmp_path / "dataset" / "00000.tar").exists()
