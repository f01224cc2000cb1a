"""Compute an ONNX model's embeddings over existing webdataset shards, then find a nearest neighbour.

    python examples/embeddings.py --model MODEL.onnx --shards SHARDS --output OUTPUT [--distributor ray]
    python examples/embeddings.py --model clip-vit-b-32.onnx --shards s3://bucket/dataset \
        --output s3://bucket/dataset-clip --mean 0.48145466 0.4578275 0.40821073 --std 0.26862954 0.26130258 0.27577711

SHARDS is a folder of `NNNNN.tar` webdataset shards (img2dataset-ng's or img2dataset 1.47's); MODEL an
.onnx file that takes a batch of images (N, 3, S, S) with a free batch size N (docs/model.md shows how
to export one). Nothing is downloaded: each image is read from its
tar, decoded, resized (shorter side) and center cropped to --input_size, normalised with --mean/--std
(ImageNet's by default), and run through the model in batches. OUTPUT receives, per input shard,
NNNNN.parquet (every input row, with the model's output in an `embedding` column), NNNNN.npy (the same
outputs as a float32 matrix, one row per parquet row, NaN rows for failed samples) and
NNNNN_stats.json; no images (output_format="metadata"). Any fsspec url works for all three paths
(s3://... with s3fs installed and credentials in the environment).

Then the script reads the outputs back, prints the matrix's shape, and the nearest neighbour of the
first key by cosine similarity. Running it again finishes an interrupted run (the shards whose stats
file exists are skipped). Exit code: 0 when every shard finished, 1 when some failed as a whole (run
it again), 2 on bad arguments. --distributor ray runs on the Ray cluster at RAY_ADDRESS (else the one
running on this machine, else a local one), the model in an actor pool (on GPUs when the cluster has
them); see docs/model.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import fsspec
import numpy as np
import pyarrow.parquet as pq

from img2dataset_ng import ConfigError, InputError, StorageError, download

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the .onnx file (any fsspec url)")
    parser.add_argument("--shards", required=True, help="a folder of NNNNN.tar webdataset shards")
    parser.add_argument("--output", required=True, help="where NNNNN.parquet, NNNNN.npy and the stats go")
    parser.add_argument("--distributor", default="multiprocessing", choices=["multiprocessing", "ray", "pyspark"])
    parser.add_argument("--input_size", type=int, default=224, help="the model's input side in pixels")
    parser.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, metavar=("R", "G", "B"))
    parser.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD, metavar=("R", "G", "B"))
    parser.add_argument("--batch_size", type=int, default=32, help="images per model call")
    return parser.parse_args(argv)


def read_back(output: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Every row's (shard name, key) and the matrix of outputs, in shard then row order: each shard's
    NNNNN.npy is row for row with its NNNNN.parquet."""
    fs, root = fsspec.core.url_to_fs(output)
    rows: list[tuple[str, str]] = []
    blocks: list[np.ndarray] = []
    for path in sorted(fs.glob(root.rstrip("/") + "/*.parquet")):
        name = path.rsplit("/", 1)[-1][: -len(".parquet")]
        if not name.isdigit():  # only the shards' NNNNN.parquet
            continue
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["key"])
        with fs.open(path[: -len(".parquet")] + ".npy", "rb") as f:
            matrix = np.load(f)
        assert len(matrix) == table.num_rows, f"{name}.npy does not match {name}.parquet"
        rows += [(name, key) for key in table.column("key").to_pylist()]
        blocks.append(matrix)
    return rows, np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)


def nearest_neighbour(matrix: np.ndarray, index: int) -> tuple[int, float]:
    """The row most similar to row `index` by cosine similarity, and that similarity (rows with NaN,
    the failed samples, are never chosen)."""
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    similarity = unit @ unit[index]
    similarity[index] = -np.inf
    similarity[np.isnan(similarity)] = -np.inf
    best = int(np.argmax(similarity))
    return best, float(similarity[best])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)
    try:
        summary = download(
            args.shards,
            input_format="webdataset",
            output_folder=args.output,
            output_format="metadata",  # only NNNNN.parquet: the images stay in the input's tars
            resize_mode="no",  # the model sees each image as stored (it resizes and crops it itself)
            skip_reencode=True,  # and nothing is encoded again (for png shards, add encode_format="png")
            processes_count=os.cpu_count() or 1,
            distributor=args.distributor,
            model=args.model,
            model_input_size=args.input_size,
            model_mean=list(args.mean),
            model_std=list(args.std),
            model_batch_size=args.batch_size,
            model_save_npy=True,  # NNNNN.npy beside each NNNNN.parquet
        )
    except (ConfigError, InputError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary.line())
    if summary.failed_shards:
        print(f"shards that failed as a whole: {summary.failed_shards}; run again to retry them", file=sys.stderr)
        return 1

    rows, matrix = read_back(args.output)
    print(f"embeddings: {matrix.shape[0]} rows x {matrix.shape[1]} values (float32)")
    valid = ~np.isnan(matrix).any(axis=1)  # rows of samples that failed (in the input or here) are NaN
    print(f"{int(valid.sum())} rows with an embedding, {int((~valid).sum())} without (failed samples)")
    if valid.sum() < 2:
        return 0
    first = int(np.argmax(valid))
    best, similarity = nearest_neighbour(matrix, first)
    (shard, key), (other_shard, other_key) = rows[first], rows[best]
    print(f"nearest neighbour of {key}: {other_key}, cosine similarity {similarity:.4f}")
    # output shard N holds the rows of input shard N: the images are members KEY.jpg (or .png, .webp) there
    shards = args.shards.rstrip("/")
    print(f"their images: {key}.* in {shards}/{shard}.tar, {other_key}.* in {shards}/{other_shard}.tar")
    return 0


if __name__ == "__main__":  # required: each worker process re-imports this file
    sys.exit(main(sys.argv[1:]))
