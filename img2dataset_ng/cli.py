"""The `img2dataset-ng` command: every option of `download()` is a flag of the same name.

Flags are written the way img2dataset users write them: `--flag=True`, `--flag True`, bare
`--flag` for booleans, lists as JSON or Python literals, and hyphens for underscores.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .config import ConfigError
from .main import download
from .reader import InputError

HELP = {
    "url_list": "file or folder of url lists (any fsspec url)",
    "image_size": "target size in pixels",
    "output_folder": "where shards go (any fsspec url)",
    "processes_count": "worker processes (multiprocessing); size of a local Spark session or Ray instance "
    "(a running cluster brings its own)",
    "resize_mode": "no, border, keep_ratio, keep_ratio_largest, center_crop",
    "resize_only_if_bigger": "never upscale; leave images that are not bigger untouched",
    "upscale_interpolation": "nearest, linear, cubic, area, lanczos",
    "downscale_interpolation": "nearest, linear, cubic, area, lanczos",
    "encode_quality": "jpg/webp quality 0-100; png compression 0-9",
    "encode_format": "jpg, png, webp",
    "skip_reencode": "keep the original bytes when no resize happened and the format matches",
    "output_format": "files, webdataset, parquet, tfrecord, dummy",
    "input_format": "txt, txt.gz, csv, csv.gz, tsv, tsv.gz, json, json.gz, jsonl, jsonl.gz, parquet",
    "url_col": "url column",
    "caption_col": "caption column; when set, captions are saved",
    "bbox_col": "column of [[x0,y0,x1,y1], ...] relative boxes to blur",
    "thread_count": "concurrent downloads per process",
    "number_sample_per_shard": "rows per shard",
    "extract_exif": "add an exif column",
    "save_additional_columns": 'input columns copied into the metadata, e.g. \'["a","b"]\'',
    "timeout": "deadline in seconds for each whole request",
    "enable_wandb": "log progress to Weights & Biases",
    "wandb_project": "Weights & Biases project",
    "oom_shard_count": "digits of the shard part of names and keys",
    "compute_hash": "None, md5, sha256, sha512",
    "verify_hash": "[column, hash_type]: fail samples whose hash differs",
    "distributor": "multiprocessing, pyspark, ray",
    "subjob_size": "pyspark: the most shards in flight at once, each its own Spark job (at most 2 x the cores)",
    "retries": "extra download attempts per url (timeouts, connection errors, 429, 5xx)",
    "disable_all_reencoding": "store the downloaded bytes as they are",
    "min_image_size": "refuse images whose smaller side is below this",
    "max_image_area": "refuse images with more pixels",
    "max_aspect_ratio": "refuse images with a larger max/min side ratio",
    "incremental_mode": "incremental, overwrite, extend",
    "max_shard_retry": "rounds of re-running shards that failed as a whole",
    "user_agent_token": "appended to the User-Agent; selects UA-scoped X-Robots-Tag rules",
    "disallowed_header_directives": "X-Robots-Tag directives that refuse an image; '[]' turns it off "
    "(default: noai, noimageai, noindex, noimageindex)",
    "ignore_ssl_certificate": "skip TLS verification",
    "max_download_bytes": "refuse bodies larger than this many bytes ('too large'), without reading them",
    "max_image_pixels": "refuse, before decoding, images whose header declares more pixels "
    "(decompression bombs; also capped by the machine's memory)",
    "storage_options": 'fsspec storage options as JSON, e.g. \'{"endpoint_url": "http://..."}\'',
    "tmp_folder": "where shard inputs wait for workers; all workers must read it (default: OUTPUT/_tmp)",
    "progress": "show the progress bar (default: on a terminal)",
}
TRUE, FALSE = {"true", "1", "yes", "y"}, {"false", "0", "no", "n"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_literal(text: str) -> Any:
    """JSON, then a Python literal, then a comma-separated list of words."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return [part.strip() for part in text.split(",") if part.strip()]


def value_parser(annotation: str) -> Any:
    optional = "None" in annotation
    base = annotation.replace("| None", "").strip()

    def parse(text: str) -> Any:
        if optional and text.strip() in ("None", "none", "null"):
            return None
        if base == "bool":
            return parse_bool(text)
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base.startswith(("list", "dict")):
            value = parse_literal(text)
            if base.startswith("list") and isinstance(value, (str, int, float)):
                value = [value]
            return value
        return text

    parse.__name__ = base  # argparse names the type in its errors
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2dataset-ng",
        description="Turn lists of image urls into an image dataset (a drop-in successor of img2dataset).",
        allow_abbrev=False,
    )
    parser.add_argument("url_list_positional", nargs="?", metavar="URL_LIST", help=HELP["url_list"])
    for name, parameter in inspect.signature(download).parameters.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = "required" if parameter.default is inspect.Parameter.empty else repr(parameter.default)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "type": value_parser(str(parameter.annotation)),
            "help": f"{HELP.get(name, '')} (default: {default})",
        }
        if str(parameter.annotation).startswith("bool"):
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        parser.add_argument(*flags, **kwargs)
    return parser


def normalise_argv(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """A bare boolean flag followed by something that is not a boolean gets an explicit True."""
    bool_flags = {flag for action in parser._actions if action.metavar == "BOOL" for flag in action.option_strings}
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in bool_flags:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or following.strip().lower() not in TRUE | FALSE:
                out.append("True")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(normalise_argv(list(sys.argv[1:] if argv is None else argv), parser)))
    positional = args.pop("url_list_positional", None)
    if positional is not None and "url_list" in args:
        parser.error("give url_list once, as URL_LIST or --url_list")
    if positional is not None:
        args["url_list"] = positional
    if "url_list" not in args:
        parser.error("url_list is required (URL_LIST or --url_list)")
    # our own INFO messages (the summary); other libraries' only from WARNING up
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)
    try:
        summary = download(**args)
    except (ConfigError, InputError) as error:
        parser.exit(2, f"img2dataset-ng: error: {error}\n")
    return 1 if summary.failed_shards else 0


if __name__ == "__main__":
    sys.exit(main())
