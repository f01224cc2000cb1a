"""Options: img2dataset-style flags, defaults, and bad values refused at once."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from img2dataset_ng import ConfigError, download
from img2dataset_ng.cli import build_parser, main, normalise_argv
from tests.outputs import read_metadata, write_url_list

CONTRACT_DEFAULTS = {
    "image_size": 256,
    "output_folder": "images",
    "processes_count": 1,
    "resize_mode": "border",
    "resize_only_if_bigger": False,
    "upscale_interpolation": "lanczos",
    "downscale_interpolation": "area",
    "encode_quality": 95,
    "encode_format": "jpg",
    "skip_reencode": False,
    "output_format": "files",
    "input_format": "txt",
    "url_col": "url",
    "caption_col": None,
    "bbox_col": None,
    "thread_count": 256,
    "number_sample_per_shard": 10000,
    "extract_exif": True,
    "save_additional_columns": None,
    "timeout": 10,
    "enable_wandb": False,
    "wandb_project": "img2dataset",
    "oom_shard_count": 5,
    "compute_hash": "sha256",
    "verify_hash": None,
    "distributor": "multiprocessing",
    "subjob_size": 1000,
    "retries": 0,
    "disable_all_reencoding": False,
    "min_image_size": 0,
    "max_image_area": float("inf"),
    "max_aspect_ratio": float("inf"),
    "incremental_mode": "incremental",
    "max_shard_retry": 1,
    "user_agent_token": None,
    "ignore_ssl_certificate": False,
}


def parse(*argv: str) -> dict:
    parser = build_parser()
    return vars(parser.parse_args(normalise_argv(list(argv), parser)))


def test_download_has_every_contract_option_with_its_default():
    params = inspect.signature(download).parameters
    assert list(params)[0] == "url_list"
    for name, default in CONTRACT_DEFAULTS.items():
        assert params[name].default == default, name


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--skip_reencode=True"], True),
        (["--skip_reencode", "True"], True),
        (["--skip_reencode", "False"], False),
        (["--skip_reencode"], True),
        (["--skip-reencode"], True),
        (["--skip_reencode", "urls.txt"], True),
    ],
)
def test_boolean_flags(argv, expected):
    assert parse(*argv)["skip_reencode"] is expected


def test_list_number_and_none_flags():
    args = parse(
        "urls.txt",
        "--save_additional_columns",
        '["a","b"]',
        "--disallowed_header_directives",
        "[]",
        "--verify-hash",
        "['sha', 'sha256']",
        "--output-format",
        "webdataset",
        "--image_size=64",
        "--timeout",
        "2.5",
        "--max_image_area",
        "inf",
        "--compute_hash",
        "None",
    )
    assert args["url_list_positional"] == "urls.txt"
    assert args["save_additional_columns"] == ["a", "b"]
    assert args["disallowed_header_directives"] == []
    assert args["verify_hash"] == ["sha", "sha256"]
    assert args["output_format"] == "webdataset"
    assert args["image_size"] == 64 and args["timeout"] == 2.5 and args["max_image_area"] == float("inf")
    assert args["compute_hash"] is None


def test_help_lists_every_option_with_its_default():
    result = subprocess.run(
        [sys.executable, "-m", "img2dataset_ng", "--help"], capture_output=True, text=True, check=True
    )
    for name in inspect.signature(download).parameters:
        assert f"--{name}" in result.stdout
    assert "(default: 'border')" in result.stdout and "(default: 10000)" in result.stdout


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("resize_mode", "stretch", "no, border, keep_ratio, keep_ratio_largest, center_crop"),
        ("input_format", "xlsx", "txt, txt.gz, csv"),
        ("output_format", "zip", "files, webdataset, parquet, tfrecord, metadata, dummy"),
        ("distributor", "dask", "multiprocessing, pyspark, ray"),
        ("compute_hash", "crc32", "md5, sha256, sha512"),
        ("encode_format", "gif", "jpg, png, webp"),
        ("incremental_mode", "append", "incremental, overwrite, extend"),
        ("downscale_interpolation", "fancy", "nearest, linear, cubic, area, lanczos"),
    ],
)
def test_bad_values_fail_at_once_naming_option_and_allowed_values(tmp_path, option, value, allowed):
    with pytest.raises(ConfigError) as error:
        download(str(tmp_path / "does-not-matter.txt"), output_folder=str(tmp_path / "out"), **{option: value})
    assert option in str(error.value) and allowed in str(error.value) and value in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize("column", ["key", "status", "sha256", "url", "caption"])
def test_reserved_additional_columns_are_refused(tmp_path, column):
    with pytest.raises(ConfigError, match=f"reserved names {column}"):
        download("x.txt", output_folder=str(tmp_path / "out"), save_additional_columns=["ok", column])


@pytest.mark.parametrize(
    "options, column",
    [
        ({"output_format": "parquet", "save_additional_columns": ["jpg"]}, "jpg"),  # the parquet's image column
        ({"output_format": "parquet", "encode_format": "webp", "bbox_col": "webp"}, "webp"),
        ({"output_format": "tfrecord", "save_additional_columns": ["txt"]}, "txt"),  # a feature of each Example
        ({"save_additional_columns": ["__bbox"]}, "__bbox"),  # the private columns the stages read
        ({"save_additional_columns": ["ok", "__anything"]}, "__anything"),
    ],
)
def test_columns_that_would_clash_in_the_output_are_refused_before_any_work(tmp_path, server, options, column):
    url_list = write_url_list(
        [{"url": server.url("/img/64x64.jpg"), "jpg": "a", "webp": "[]", "txt": "t"}], tmp_path / "u.csv", "csv"
    )
    with pytest.raises(ConfigError, match=f"may not use the reserved names {column}"):
        download(str(url_list), input_format="csv", output_folder=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_column_named_like_the_image_extension_is_fine_where_nothing_clashes(tmp_path, server):
    url_list = write_url_list([{"url": server.url("/img/64x64.jpg"), "jpg": "a"}], tmp_path / "u.csv", "csv")
    download(
        str(url_list),
        input_format="csv",
        output_format="webdataset",
        output_folder=str(tmp_path / "out"),
        save_additional_columns=["jpg"],
    )
    assert read_metadata(tmp_path / "out")["jpg"].to_pylist() == ["a"]


def test_png_quality_is_a_compression_level_clamped_to_9_and_jpg_quality_is_checked():
    from img2dataset_ng.config import Config

    assert Config.from_options(url_list="x", encode_format="png").resize.encode_quality == 9
    with pytest.raises(ConfigError, match="encode_quality must be 0-100"):
        download("x.txt", encode_quality=101)


def test_cli_runs_a_download_and_reports_bad_input(tmp_path, server, capsys):
    url_list = write_url_list([{"url": server.url("/img/64x64.jpg")}] * 3, tmp_path / "urls.csv", "csv")
    out = tmp_path / "out"
    assert (
        main(
            [
                str(url_list),
                "--input_format",
                "csv",
                "--output_folder",
                str(out),
                "--output-format=parquet",
                "--thread_count",
                "2",
                "--extract_exif",
                "False",
                "--compute_hash",
                "md5",
            ]
        )
        == 0
    )
    table = read_metadata(out)
    assert table.column("status").to_pylist() == ["success"] * 3
    assert "exif" not in table.column_names and "md5" in table.column_names

    with pytest.raises(SystemExit) as exit_:
        main([str(url_list), "--input_format", "csv", "--url_col", "link", "--output_folder", str(tmp_path / "o2")])
    assert exit_.value.code == 2
    assert "'link' not found" in capsys.readouterr().err


def test_config_defaults_are_the_option_defaults():
    """The dataclasses' own defaults and `download()`'s defaults are one set of values."""
    from img2dataset_ng.config import Config, ReadConfig

    assert Config.from_options(url_list="urls.txt") == Config(read=ReadConfig(url_list="urls.txt"))


def test_download_binds_its_arguments_like_a_python_function(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'image_sise'"):
        download("urls.txt", image_sise=64)
    with pytest.raises(TypeError, match="multiple values for argument 'image_size'"):
        download("urls.txt", 64, image_size=32)
    with pytest.raises(ConfigError, match="image_size must be >= 1; got 0"):
        download("urls.txt", 0, str(tmp_path / "out"))  # positional, in img2dataset's order
