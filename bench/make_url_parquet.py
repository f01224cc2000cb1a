"""Write a large parquet url list (columns `url`, `caption`) for the reader benchmarks.

Rows are made row group by row group (vectorised with numpy and pyarrow.compute, deterministic for a
given seed), so generating 10 million rows never holds the whole table in memory.

    .venv/bin/python bench/make_url_parquet.py                    # 10M rows -> bench/.corpus/urls_10m.parquet
    .venv/bin/python bench/make_url_parquet.py --rows 1000000 --out bench/.corpus/urls_1m.parquet
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
DEFAULT_ROWS = 10_000_000
ROW_GROUP_ROWS = 100_000
SEED = 1234

WORDS = """
a an the of and with on in at by for from under over near behind beside into across through
red blue green yellow white black orange purple brown grey golden silver dark bright small large
old young happy tiny huge wooden vintage modern rustic cozy sunny rainy snowy misty quiet busy
dog cat horse bird fish cow sheep goat rabbit fox bear deer lion tiger eagle owl duck puppy kitten
man woman child girl boy family couple friends people crowd student teacher chef farmer artist
house street city village road bridge river lake mountain forest beach ocean field garden park
kitchen table chair window door room bed sofa lamp book phone laptop camera bicycle car bus train
boat plane flower tree leaf grass stone rock sky cloud sun moon star night morning evening sunset
sitting standing running walking playing eating drinking reading looking holding wearing smiling
painting drawing photo illustration poster logo icon pattern texture background closeup portrait
landscape view scene detail shot picture image design style art print card cover wallpaper
""".split()

# url pieces: http://127.0.0.1:PORT/CATEGORY/HEX2/HEX2/slug-words-ROWID.EXT
PORTS = ["8000", "8080", "8123", "9000", "18080"]
CATEGORIES = ["images", "media", "photos", "static/img", "uploads/2023", "cdn/assets", "content/pictures"]
EXTENSIONS = ["jpg", "jpeg", "png", "webp", "gif"]
HEX2 = [f"{i:02x}" for i in range(256)]


def _joined_words(rng: np.random.Generator, words: pa.Array, n: int, low: int, high: int, sep: str) -> pa.Array:
    """n strings, each `low`..`high` random words joined by `sep`."""
    counts = rng.integers(low, high + 1, size=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    picks = words.take(pa.array(rng.integers(0, len(words), size=int(offsets[-1]))))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), picks), sep)


def _choice(rng: np.random.Generator, values: list[str], n: int) -> pa.Array:
    return pa.array(values).take(pa.array(rng.integers(0, len(values), size=n)))


def make_row_group(first_row: int, n: int, seed: int = SEED) -> pa.Table:
    """Rows first_row .. first_row + n - 1; the same for the same arguments."""
    rng = np.random.default_rng([seed, first_row])
    words = pa.array(WORDS)
    row_ids = pc.cast(pa.array(np.arange(first_row, first_row + n, dtype=np.int64)), pa.string())
    slug_and_id = pc.binary_join_element_wise(_joined_words(rng, words, n, 3, 5, "-"), row_ids, "-")
    url = pc.binary_join_element_wise(
        pa.scalar("http://127.0.0.1:"),
        _choice(rng, PORTS, n),
        pa.scalar("/"),
        _choice(rng, CATEGORIES, n),
        pa.scalar("/"),
        _choice(rng, HEX2, n),
        pa.scalar("/"),
        _choice(rng, HEX2, n),
        pa.scalar("/"),
        slug_and_id,
        pa.scalar("."),
        _choice(rng, EXTENSIONS, n),
        "",
    )
    caption = pc.utf8_capitalize(_joined_words(rng, words, n, 7, 24, " "))
    caption = pc.utf8_slice_codeunits(caption, 0, 150)
    return pa.table({"url": url, "caption": caption})


def parquet_rows(path: Path) -> int | None:
    """Row count of an existing parquet file, None when there is none (or it is unreadable)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid):
        return None


def make_url_parquet(path: Path, rows: int = DEFAULT_ROWS, seed: int = SEED) -> Path:
    """Write `rows` rows to `path` unless a file with that many rows is there already."""
    if parquet_rows(path) == rows:
        print(f"{path} already has {rows:,} rows; not regenerated")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    start = time.monotonic()
    schema = pa.schema([("url", pa.string()), ("caption", pa.string())])
    with pq.ParquetWriter(partial, schema) as writer:
        for first in range(0, rows, ROW_GROUP_ROWS):
            writer.write_table(make_row_group(first, min(ROW_GROUP_ROWS, rows - first), seed))
    os.replace(partial, path)
    size = path.stat().st_size / 2**20
    print(f"wrote {rows:,} rows to {path} ({size:,.0f} MiB) in {time.monotonic() - start:.1f}s")
    return path


def default_path(rows: int) -> Path:
    label = f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else str(rows)
    return BENCH / ".corpus" / f"urls_{label}.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/.corpus/urls_<rows>.parquet")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    make_url_parquet(args.out or default_path(args.rows), args.rows, args.seed)


if __name__ == "__main__":
    main()
