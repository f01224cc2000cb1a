"""Duplicates in a finished dataset: exact copies, near copies and placeholders, from the shards' metadata.

`find_duplicates(output_folder)` reads the `NNNNN.parquet` files of an output folder of img2dataset-ng or
img2dataset 1.47 (any output format; only the columns it needs, so the image column of output_format="parquet"
is never read), keeps the successful rows, and finds:

- exact duplicates: rows whose hash of the downloaded bytes (`sha256`, else `sha512`, else `md5`: the
  compute_hash column) is the same: the same file, whatever its url;
- placeholders: an exact duplicate that one host served for at least `placeholder_min_urls` different urls
  (a "no image" picture, a logo, a tracking pixel): the whole group of that hash is one placeholder cluster,
  and the hosts that served it that often are named;
- near duplicates: rows whose `phash` (compute_phash) values are at most `max_distance` bits apart, clustered
  transitively (so two members of one cluster may be further apart than that), among rows that are not all
  the same file: a resized, re-encoded or reframed copy. Identical phash with different bytes is near, not
  exact. A near cluster may hold exact duplicates too (they share a phash); a row can be in two clusters.

The report goes to `{output_folder}/_duplicates/duplicates.parquet`, written whole or not at all: in a
folder of its own because a `*.parquet` glob of the output folder (users' `glob("out/*.parquet")`, the
`parquet_shards` input format) must find the shards only; the `_` prefix keeps pyarrow datasets and Spark
off it. One row per (cluster, sample), by cluster then row order; `report_schema` says what each holds.
"""

from __future__ import annotations

import itertools
import logging
import math
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .errors import ConfigError, InputError
from .naming import DUPLICATES_FOLDER, is_lock, shard_id_of
from .options import HashType
from .sample import URL, Status
from .stages.phash import COLUMN as PHASH_COLUMN
from .storage import READ_THREADS, Folder, accessing

logger = logging.getLogger(__name__)

REPORT_FOLDER, REPORT_FILE = DUPLICATES_FOLDER, "duplicates.parquet"
DEFAULT_MAX_DISTANCE = 4  # bits of 64: a resize, a re-encode or a thin border; unrelated photos are ~16+ apart
MAX_MAX_DISTANCE = 16  # beyond, unrelated pictures match: a quarter of the bits
DEFAULT_PLACEHOLDER_MIN_URLS = 5  # a host serving one file for 5 different urls: not a coincidence
TOP = 10  # clusters and hosts named in the logged summary
KEY, STATUS, PHASH = "key", "status", PHASH_COLUMN.name
EXACT_COLUMNS = tuple(h.value for h in (HashType.SHA256, HashType.SHA512, HashType.MD5))  # the first present
HASH_BITS = 64
MIN_BANDS = 3  # bands of at most 22 bits: the table from band value to hashes takes at most 32 MB
PAIRS_PER_STEP = 1 << 22  # candidate pairs compared at once (their arrays: ~200 MB)


class Kind(str, Enum):
    EXACT = "exact"
    NEAR = "near"
    PLACEHOLDER = "placeholder"


@dataclass(frozen=True)
class Member:
    key: str
    url: str
    host: str
    exact_hash: str | None
    phash: str | None
    distance: int | None  # phash bits that differ from the cluster's first member


@dataclass(frozen=True)
class Cluster:
    id: int
    kind: Kind
    members: tuple[Member, ...]  # in row order (shard, then key)
    hosts: tuple[tuple[str, int], ...] = ()  # placeholder: (host, different urls that served it), most first

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Duplicates:
    """What `find_duplicates` found; the same as the report file, plus counts."""

    output_folder: str
    report: str  # the report file's url
    shards: int  # metadata files read
    samples: int  # successful rows among them
    hash_column: str | None  # the exact hash used: sha256, sha512, md5; None: no exact nor placeholder clusters
    has_phash: bool  # False: no near clusters
    max_distance: int
    placeholder_min_urls: int
    clusters: tuple[Cluster, ...]

    def of_kind(self, kind: Kind | str) -> list[Cluster]:
        return [cluster for cluster in self.clusters if cluster.kind is Kind(kind)]

    def counts(self) -> dict[str, dict[str, int]]:
        """{kind: {"clusters": n, "samples": n, "redundant": samples beyond one per cluster}}, every kind."""
        out = {kind.value: {"clusters": 0, "samples": 0, "redundant": 0} for kind in Kind}
        for cluster in self.clusters:
            count = out[cluster.kind.value]
            count["clusters"] += 1
            count["samples"] += cluster.size
            count["redundant"] += cluster.size - 1
        return out

    def placeholder_hosts(self) -> list[tuple[str, int, int]]:
        """(host, urls that served a placeholder, placeholder images), most urls first."""
        urls: Counter[str] = Counter()
        images: Counter[str] = Counter()
        for cluster in self.of_kind(Kind.PLACEHOLDER):
            for host, count in cluster.hosts:
                urls[host] += count
                images[host] += 1
        return sorted(((host, n, images[host]) for host, n in urls.items()), key=lambda t: (-t[1], t[0]))

    def summary_lines(self, top: int = TOP) -> list[str]:
        """The terminal summary: counts per kind, the largest clusters, the top placeholder hosts, notes."""
        hashes = ", ".join(c for c in (self.hash_column, PHASH if self.has_phash else None) if c) or "no hash column"
        read = f"{self.samples} successful sample(s) in {self.shards} shard(s)"
        lines = [f"duplicates in {self.output_folder}: {read} ({hashes})"]
        described = {
            Kind.EXACT.value: "exact (same file)",
            Kind.NEAR.value: f"near (phash within {self.max_distance} bits)",
            Kind.PLACEHOLDER.value: f"placeholder (one file for >= {self.placeholder_min_urls} urls of a host)",
        }
        for kind, count in self.counts().items():
            lines.append(
                f"  {described[kind]}: {count['clusters']} cluster(s), {count['samples']} sample(s), "
                f"{count['redundant']} beyond the first of each"
            )
        largest = sorted(self.clusters, key=lambda c: (-c.size, c.id))[:top]
        if largest:
            lines.append("largest cluster(s) (cluster, kind, samples, first url):")
            lines += [f"  {c.id:6d}  {c.kind.value:11s} {c.size:6d}  {c.members[0].url}" for c in largest]
        hosts = self.placeholder_hosts()[:top]
        if hosts:
            lines.append("top placeholder host(s) (urls, placeholder images, host):")
            lines += [f"  {urls:6d}  {images:4d}  {host}" for host, urls, images in hosts]
        if self.hash_column is None:
            lines.append(
                "no exact duplicates nor placeholders: the metadata has no hash column "
                "(compute_hash: sha256, md5 or sha512)"
            )
        if not self.has_phash:
            lines.append(
                "no near duplicates: the metadata has no phash column; download with compute_phash=True, or "
                "reprocess this folder with it (url_list=this folder, input_format='webdataset', 'parquet_shards' "
                "or 'files_shards')"
            )
        lines.append(f"report: {self.report}")
        return lines


def find_duplicates(
    output_folder: str,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    placeholder_min_urls: int = DEFAULT_PLACEHOLDER_MIN_URLS,
    storage_options: Mapping[str, Any] | None = None,
) -> Duplicates:
    """Find exact duplicates, near duplicates (phash) and placeholders among the successful samples of a
    finished dataset, write the report (`{output_folder}/_duplicates/duplicates.parquet`) and log a summary.

    Bad options raise ConfigError; a folder that is missing, a file, or holds no metadata parquet raises
    InputError; one that cannot be reached, StorageError."""
    max_distance = _int_option("max_distance", max_distance, 0, MAX_MAX_DISTANCE)
    placeholder_min_urls = _int_option("placeholder_min_urls", placeholder_min_urls, 2, None)
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise ConfigError(f"storage_options must be a dict of fsspec options; got {storage_options!r}")
    folder = Folder(output_folder, storage_options or {})
    names = _shard_files(folder)
    rows = _read_successes(folder, names)
    hash_column = next((c for c in EXACT_COLUMNS if c in rows.column_names), None)
    has_phash = PHASH in rows.column_names
    files = _codes(rows[hash_column]) if hash_column else None  # one number per distinct file
    groups = _exact_groups(rows, files, placeholder_min_urls) + _near_groups(rows, files, max_distance)
    groups.sort(key=lambda group: group[1][0])  # by first member's row
    clusters = tuple(
        _cluster(n, kind, members, hosts, rows, hash_column) for n, (kind, members, hosts) in enumerate(groups)
    )
    report_folder = folder.child(REPORT_FOLDER)
    result = Duplicates(
        output_folder=folder.url,
        report=f"{report_folder.url}/{REPORT_FILE}",
        shards=len(names),
        samples=rows.num_rows,
        hash_column=hash_column,
        has_phash=has_phash,
        max_distance=max_distance,
        placeholder_min_urls=placeholder_min_urls,
        clusters=clusters,
    )
    with accessing(result.report, "write the duplicates report to"):
        report_folder.makedirs()
        report_folder.write(REPORT_FILE, _report_bytes(clusters, hash_column, has_phash))
    for line in result.summary_lines():
        logger.info("%s", line)
    return result


def _int_option(name: str, value: Any, low: int, high: int | None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f"an integer from {low} to {high}" if high else f"an integer of at least {low}"
        raise ConfigError(f"{name} must be {allowed}; got {value!r}")
    return int(value)


# --- reading -------------------------------------------------------------------------------------


def _shard_files(folder: Folder) -> list[str]:
    """The metadata parquet files (`NNNNN.parquet`) of the folder, in shard order; InputError when none."""
    with accessing(folder.url, "read output_folder"):
        fs, root = folder.fs, folder.root
        if not fs.exists(root):
            raise InputError(f"output_folder {folder.url!r} does not exist: give the folder a download wrote")
        if not fs.isdir(root):
            raise InputError(f"output_folder {folder.url!r} is a file: give the folder a download wrote")
        names = folder.names()
    shards = [n for n in names if n.endswith(".parquet") and n[: -len(".parquet")].isdigit()]
    if not shards:
        raise InputError(
            f"output_folder {folder.url!r} holds no shard metadata (NNNNN.parquet files): give the output_folder "
            "of a download by img2dataset-ng or img2dataset"
        )
    if any(is_lock(n) for n in names):
        logger.warning(
            "a run may be writing to %s (it holds a lock file): the report covers the shards there now", folder.url
        )
    return sorted(shards, key=lambda n: (shard_id_of(n), n))


def _read_successes(folder: Folder, names: list[str]) -> pa.Table:
    """key, url, the hash columns present, phash: the successful rows of every file, in shard order.
    Only these columns are read (a parquet shard's image column is not)."""

    def read(name: str) -> pa.Table:
        with accessing(folder.url + "/" + name, "read"), folder.open(name) as f:
            parquet = pq.ParquetFile(f)
            present = set(parquet.schema_arrow.names)
            missing = [c for c in (KEY, URL, STATUS) if c not in present]
            if missing:
                raise InputError(
                    f"{folder.url}/{name} is no metadata of img2dataset(-ng): it has no {', '.join(missing)} column"
                )
            wanted = [c for c in (KEY, URL, STATUS, *EXACT_COLUMNS, PHASH) if c in present]
            table = parquet.read(columns=wanted)
        table = table.filter(pc.equal(table[STATUS], Status.SUCCESS.value))
        return pa.table({c: table[c].cast(pa.string()) for c in wanted if c != STATUS})

    local = isinstance(folder.fs, LocalFileSystem)
    if local or len(names) == 1:
        tables = [read(name) for name in names]
    else:  # an object store answers each request in tens of ms: many at once
        with ThreadPoolExecutor(min(READ_THREADS, len(names))) as pool:
            tables = list(pool.map(read, names))
    columns = [c for c in (KEY, URL, *EXACT_COLUMNS, PHASH) if any(c in t.column_names for t in tables)]
    tables = [
        pa.table({c: t[c] if c in t.column_names else pa.nulls(t.num_rows, pa.string()) for c in columns})
        for t in tables
    ]
    return pa.concat_tables(tables).combine_chunks()


# --- exact duplicates and placeholders -----------------------------------------------------------

Group = tuple[Kind, np.ndarray, tuple[tuple[str, int], ...]]  # kind, member rows (ascending), placeholder hosts


def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An integer per row, equal for equal values; -1 for nulls."""
    encoded = pc.dictionary_encode(column)
    indices = encoded.combine_chunks().indices if isinstance(encoded, pa.ChunkedArray) else encoded.indices
    return indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _groups_of(labels: np.ndarray, minimum: int = 2) -> list[np.ndarray]:
    """The rows (ascending) of each label >= 0 held by at least `minimum` rows, in the order of their first row."""
    rows = np.nonzero(labels >= 0)[0]
    if rows.size == 0:
        return []
    order = rows[np.argsort(labels[rows], kind="stable")]
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], order.size]
    kept = np.flatnonzero(ends - starts >= minimum)
    groups = [order[s:e] for s, e in zip(starts[kept].tolist(), ends[kept].tolist())]
    return sorted(groups, key=lambda g: g[0])


def _host(url: str | None) -> str:
    try:
        return urllib.parse.urlsplit(url or "").hostname or ""
    except ValueError:
        return ""


def _exact_groups(rows: pa.Table, files: np.ndarray | None, min_urls: int) -> list[Group]:
    """One group per exact hash held by 2+ rows: a placeholder when some host served it for min_urls+ urls.
    `files`: the exact hash's codes (`_codes`), None without a hash column."""
    if files is None:
        return []
    found = _groups_of(files)
    large = [members for members in found if members.size >= min_urls]  # the others cannot be placeholders
    urls = iter(rows[URL].take(pa.array(np.concatenate(large))).to_pylist() if large else [])
    groups = []
    for members in found:
        per_host: dict[str, set[str]] = {}
        for url in itertools.islice(urls, members.size) if members.size >= min_urls else ():
            per_host.setdefault(_host(url), set()).add(url)
        hosts = sorted(((h, len(u)) for h, u in per_host.items() if len(u) >= min_urls), key=lambda t: (-t[1], t[0]))
        groups.append((Kind.PLACEHOLDER if hosts else Kind.EXACT, members, tuple(hosts)))
    return groups


# --- near duplicates -------------------------------------------------------------------------------

_HEX = np.full(256, 255, np.uint8)  # a byte's hex digit value; 255: not a hex digit
_HEX[[ord(c) for c in "0123456789"]] = range(10)
_HEX[[ord(c) for c in "abcdef"]] = range(10, 16)
_HEX[[ord(c) for c in "ABCDEF"]] = range(10, 16)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def parse_phashes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values as uint64, valid) of a column of 16-hex-digit phashes; a null or malformed value is not valid."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    column = column.cast(pa.binary())  # its bytes
    valid = pc.fill_null(pc.equal(pc.binary_length(column), 16), False).to_numpy(zero_copy_only=False)
    values = np.zeros(len(column), np.uint64)
    if not valid.any():
        return values, valid
    kept = column.filter(pa.array(valid))  # values of 16 bytes, back to back in the data buffer
    offsets = np.frombuffer(kept.buffers()[1], np.int32)[kept.offset : kept.offset + len(kept) + 1]
    digits = _HEX[np.frombuffer(kept.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 16)]
    good = (digits != 255).all(axis=1)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    parsed = (digits.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
    where = np.flatnonzero(valid)
    values[where] = np.where(good, parsed, 0)
    valid[where[~good]] = False
    return values, valid


def popcount(values: np.ndarray) -> np.ndarray:
    """The set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    return _POPCOUNT8[values.view(np.uint8).reshape(-1, 8)].sum(axis=1)


def bands(count: int) -> list[tuple[int, int]]:
    """(shift, width) of `count` bands that split the 64 bits, as equal as can be."""
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    return [(sum(widths[:i]), width) for i, width in enumerate(widths)]


def band_count(hashes: int, max_distance: int) -> int:
    """How many bands make the least work for `hashes` distinct hashes: per band, each hash looks up the
    hashes whose band value is within max_distance // count bits of its own (probes), and is compared with
    those it finds (about hashes / 2**width per probe). Fewer, wider bands: fewer comparisons, more probes."""

    def work(count: int) -> float:
        radius = max_distance // count
        return sum(
            sum(math.comb(width, k) for k in range(radius + 1)) * hashes * (2 + hashes / 2**width)
            for _, width in bands(count)
        )

    return min(range(MIN_BANDS, max(MIN_BANDS, max_distance + 1) + 1), key=work)


def near_pairs(values: np.ndarray, max_distance: int, count: int | None = None) -> np.ndarray:
    """(i, j) index pairs of `values` (distinct uint64 hashes) at most `max_distance` bits apart, found without
    comparing all pairs.

    Pigeonhole: cut the 64 bits into `count` bands; two hashes at most max_distance bits apart differ in at most
    max_distance // count bits (the radius) on at least one band. So, per band, each hash is compared only with
    the hashes whose band value is its own or within the radius of it (a table from band value to the hashes
    sorted by it finds them). With max_distance + 1 bands the radius is 0: hashes are compared only with those
    that agree exactly on a band; fewer, wider bands (`band_count` picks) make fewer comparisons on large
    datasets. A pair near on several bands is found several times: harmless for the union-find."""
    found = [np.empty((0, 2), np.int64)]
    if values.size < 2 or max_distance == 0:  # distinct hashes are at least 1 bit apart
        return found[0]
    count = count or band_count(values.size, max_distance)
    radius = max_distance // count
    positions = np.arange(values.size)
    for shift, width in bands(count):
        band = ((values >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(band, kind="stable")
        keys, in_order = band[order], values[order]
        first = np.zeros((1 << width) + 1, np.int64)  # first[v]: where band value v starts in the sorted hashes
        np.cumsum(np.bincount(keys, minlength=1 << width), out=first[1:])
        for flip in (
            sum(1 << b for b in bits) for k in range(radius + 1) for bits in itertools.combinations(range(width), k)
        ):
            probe = keys ^ flip
            # the hashes of band value `probe`, after this one in sorted order (so each pair once per flip)
            low = np.maximum(first[probe], positions + 1)
            many = np.maximum(first[probe + 1] - low, 0)
            ends = np.cumsum(many)
            start = 0
            while start < values.size:  # at most PAIRS_PER_STEP pairs in memory at once
                done = int(ends[start - 1]) if start else 0
                stop = max(start + 1, int(np.searchsorted(ends, done + PAIRS_PER_STEP, "right")))
                counts = many[start:stop]
                total = int(ends[stop - 1]) - done
                if total:
                    a = np.repeat(positions[start:stop], counts)
                    b = np.repeat(low[start:stop] - (np.cumsum(counts) - counts), counts) + np.arange(total)
                    close = popcount(in_order[a] ^ in_order[b]) <= max_distance
                    found.append(np.stack([order[a[close]], order[b[close]]], axis=1))
                start = stop
    return np.concatenate(found)


def components(count: int, pairs: np.ndarray) -> np.ndarray:
    """The component label (its smallest member) of each of `count` nodes joined by `pairs`: a union-find."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    labels = np.arange(count)
    touched = np.unique(pairs)
    labels[touched] = [root(node) for node in touched.tolist()]
    return labels


def _near_groups(rows: pa.Table, files: np.ndarray | None, max_distance: int) -> list[Group]:
    """Components of rows linked by phash distance <= max_distance that hold more than one file."""
    if PHASH not in rows.column_names or rows.num_rows == 0:
        return []
    values, valid = parse_phashes(rows[PHASH])
    bad = int((~valid).sum() - rows[PHASH].null_count)
    if bad:
        logger.warning("%d phash value(s) are not 16 hex digits: those samples are left out of near duplicates", bad)
    where = np.flatnonzero(valid)
    distinct, inverse = np.unique(values[where], return_inverse=True)  # identical phashes: one node
    labels = np.full(rows.num_rows, -1, np.int64)
    labels[where] = components(distinct.size, near_pairs(distinct, max_distance))[inverse.reshape(-1)]
    # a file is its exact hash; without one, every row is a file of its own
    files = np.full(rows.num_rows, -1, np.int64) if files is None else files
    files = np.where(files >= 0, files, -1 - np.arange(rows.num_rows))
    return [(Kind.NEAR, g, ()) for g in _groups_of(labels) if np.unique(files[g]).size > 1]


# --- the report ------------------------------------------------------------------------------------


def _cluster(
    number: int,
    kind: Kind,
    members: np.ndarray,
    hosts: tuple[tuple[str, int], ...],
    rows: pa.Table,
    hash_column: str | None,
) -> Cluster:
    picked = rows.take(pa.array(members))
    keys, urls = picked[KEY].to_pylist(), picked[URL].to_pylist()
    exact = picked[hash_column].to_pylist() if hash_column else [None] * len(members)
    phashes = picked[PHASH].to_pylist() if PHASH in rows.column_names else [None] * len(members)
    values, valid = parse_phashes(picked[PHASH]) if PHASH in rows.column_names else (None, None)
    distances: list[int | None] = [None] * len(members)
    if values is not None and valid[0]:
        distances = [int(d) if ok else None for d, ok in zip(popcount(values ^ values[0]).tolist(), valid.tolist())]
    return Cluster(
        id=number,
        kind=kind,
        members=tuple(
            Member(key=k, url=u, host=_host(u), exact_hash=e, phash=p, distance=d)
            for k, u, e, p, d in zip(keys, urls, exact, phashes, distances)
        ),
        hosts=hosts,
    )


def report_schema(hash_column: str | None, has_phash: bool) -> pa.Schema:
    """The report's columns: `cluster` (its number, from 0, clusters in the order of their first member),
    `kind` (exact, near, placeholder), the sample's `key`, `url` and `host` (lowercase, no port), the dataset's
    exact hash column (sha256, sha512 or md5) and `phash` when it has them, and `distance`: the phash bits that
    differ from the cluster's first member (null without phash)."""
    fields = [
        pa.field("cluster", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field(KEY, pa.string()),
        pa.field(URL, pa.string()),
        pa.field("host", pa.string()),
    ]
    fields += [pa.field(hash_column, pa.string())] if hash_column else []
    fields += [pa.field(PHASH, pa.string())] if has_phash else []
    return pa.schema([*fields, pa.field("distance", pa.int32())])


def _report_bytes(clusters: tuple[Cluster, ...], hash_column: str | None, has_phash: bool) -> bytes:
    schema = report_schema(hash_column, has_phash)
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for cluster in clusters:
        for member in cluster.members:
            columns["cluster"].append(cluster.id)
            columns["kind"].append(cluster.kind.value)
            columns[KEY].append(member.key)
            columns[URL].append(member.url)
            columns["host"].append(member.host)
            if hash_column:
                columns[hash_column].append(member.exact_hash)
            if has_phash:
                columns[PHASH].append(member.phash)
            columns["distance"].append(member.distance)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=schema), sink)
    return sink.getvalue().to_pybytes()
