"""The `img2dataset-ng` command: every option of `download()` is a flag of the same name.

Flags and `--help` come from the table of options. They are written the way img2dataset users
write them: `--flag=True`, `--flag True`, bare `--flag` for booleans, lists as JSON or Python
literals, and hyphens for underscores.

Exit codes: 0 done; 1 some shards failed (run the same command again to finish them); 2 bad
options, input or folders (one line says what and what to do); 130 interrupted (finished shards
are kept: the same command finishes the job).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .distributors.local import stop_fork_server
from .duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_PLACEHOLDER_MIN_URLS, find_duplicates
from .errors import ConfigError, InputError, Interrupted, StorageError
from .main import download
from .options import BY_NAME, FALSE, OPTIONS, REQUIRED, TRUE, Option, boolean
from .version import __version__

DONE, SHARDS_FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130


def parse_bool(text: str) -> bool:
    try:
        return boolean("", text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}") from None


def parse_literal(text: str) -> Any:
    """JSON, then a Python literal, then a comma-separated list of words."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_list(text: str) -> Any:
    value = parse_literal(text)
    return [value] if isinstance(value, (str, int, float)) else value


PARSERS: dict[type, Callable[[str], Any]] = {
    bool: parse_bool,
    int: int,
    float: float,
    str: str,
    list: parse_list,
    dict: parse_literal,
}


def value_parser(option: Option) -> Callable[[str], Any]:
    base = PARSERS[option.kind]

    def parse(text: str) -> Any:
        if option.nullable and text.strip() in ("None", "none", "null"):
            return None
        return base(text)

    parse.__name__ = option.kind.__name__  # argparse names the type in its errors
    return parse


class Parser(argparse.ArgumentParser):
    """Errors in one line (no usage dump), with the closest option for a misspelt flag."""

    def error(self, message: str) -> None:  # type: ignore[override]
        unknown = message.partition("unrecognized arguments: ")[2].split()
        flags = [flag for flag in unknown if flag.startswith("--")]
        if flags:
            flag = flags[0].split("=")[0]
            known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
            close = difflib.get_close_matches(flag, known, n=1)
            message = f"unknown option {flag}" + (f"; did you mean {close[0]}?" if close else "")
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="img2dataset-ng",
        description="Turn lists of image urls into an image dataset (a drop-in successor of img2dataset).",
        epilog="img2dataset-ng duplicates OUTPUT_FOLDER: a finished dataset's duplicates (see its --help)",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"img2dataset-ng {__version__}")
    parser.add_argument("url_list_positional", nargs="?", metavar="URL_LIST", help=BY_NAME["url_list"].help)
    for option in OPTIONS:
        name = option.name
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = "required" if option.default is REQUIRED else repr(option.default)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "type": value_parser(option),
            "help": f"{option.help} (default: {default})",
        }
        if option.kind is bool:
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


def log_to_terminal() -> None:
    """Our own INFO messages (the summary); other libraries' only from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)


def duplicates(argv: Sequence[str]) -> int:
    """`img2dataset-ng duplicates OUTPUT_FOLDER [--max_distance N] [--placeholder_min_urls N]`: duplicates.py."""
    parser = Parser(
        prog="img2dataset-ng duplicates",
        description="Exact duplicates, near duplicates (phash) and placeholders among the successful samples of a "
        "finished dataset, from its NNNNN.parquet files; the report goes to OUTPUT_FOLDER/_duplicates/.",
        allow_abbrev=False,
    )
    parser.add_argument("output_folder", metavar="OUTPUT_FOLDER", help="the output_folder of a finished download")
    flags = {
        "max_distance": (int, DEFAULT_MAX_DISTANCE, "phash bits (of 64) that near duplicates may differ in, 0-16"),
        "placeholder_min_urls": (int, DEFAULT_PLACEHOLDER_MIN_URLS, "urls of one host serving one file: a placeholder"),
        "storage_options": (parse_literal, None, "fsspec storage options of OUTPUT_FOLDER, as JSON"),
    }
    for name, (kind, default, text) in flags.items():
        dashed = [f"--{name.replace('_', '-')}"]
        parser.add_argument(f"--{name}", *dashed, type=kind, default=default, help=f"{text} (default: {default!r})")
    args = vars(parser.parse_args(list(argv)))
    log_to_terminal()
    try:
        find_duplicates(**args)
    except (ConfigError, InputError, StorageError) as error:
        parser.exit(BAD_INPUT, f"img2dataset-ng duplicates: error: {error}\n")
    return DONE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["duplicates"]:  # the subcommand; anything else is a download
        return duplicates(argv[1:])
    parser = build_parser()
    args = vars(parser.parse_args(normalise_argv(argv, parser)))
    positional = args.pop("url_list_positional", None)
    if positional is not None and "url_list" in args:
        parser.error("give url_list once, as URL_LIST or --url_list")
    if positional is not None:
        args["url_list"] = positional
    if "url_list" not in args:
        parser.error("url_list is required (URL_LIST or --url_list)")
    log_to_terminal()
    try:
        summary = download(**args)
    except (ConfigError, InputError, StorageError) as error:
        parser.exit(BAD_INPUT, f"img2dataset-ng: error: {error}\n")
    except Interrupted as stop:
        done = stop.summary
        parser.exit(
            INTERRUPTED,
            f"img2dataset-ng: interrupted: {done.shards_done} shard(s) finished in this run and kept in "
            f"{done.output_folder} ({done.shards_skipped} done before); run the same command again to finish\n",
        )
    finally:
        stop_fork_server()
    return SHARDS_FAILED if summary.failed_shards else DONE


if __name__ == "__main__":
    sys.exit(main())
