"""Models the tests (and benchmarks) build themselves: no weights are downloaded.

`small_cnn` writes an ONNX convolutional network with fixed weights (a seeded generator) made with the
`onnx` package; `MeanColour` is a numpy-only Python model for model="module:Class".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def small_cnn(
    path: Path, dim: int = 8, width: int = 4, depth: int = 1, size: int = 224, seed: int = 0, external: bool = False
) -> Path:
    """An ONNX CNN: `depth` 3x3 convolutions of `width` channels (the first with stride 2), ReLU after each,
    global average pooling, then a dense layer to `dim` values; input `pixels` (N, 3, size, size) float32
    with a free batch size, output `embedding` (N, dim), and a second output `pooled` (N, width).
    `external`: the weights in `NAME.onnx.data` beside it, as torch.onnx.export writes them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights, nodes, previous, channels = [], [], "pixels", 3
    for layer in range(depth):
        w, b = f"w{layer}", f"b{layer}"
        weights += [
            numpy_helper.from_array(rng.normal(0, 0.3, (width, channels, 3, 3)).astype(np.float32), w),
            numpy_helper.from_array(rng.normal(0, 0.1, (width,)).astype(np.float32), b),
        ]
        stride = 2 if layer == 0 else 1
        nodes += [
            helper.make_node("Conv", [previous, w, b], [f"c{layer}"], strides=[stride, stride], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"]),
        ]
        previous, channels = f"r{layer}", width
    weights += [
        numpy_helper.from_array(rng.normal(0, 0.3, (width, dim)).astype(np.float32), "dense"),
        numpy_helper.from_array(rng.normal(0, 0.1, (dim,)).astype(np.float32), "bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"]),
        helper.make_node("Gemm", ["pooled", "dense", "bias"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, size, size])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["n", width]),
        ],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=Path(path).name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return Path(path)


class MeanColour:
    """A numpy-only model: per image, each channel's mean and standard deviation (6 values)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.float64)  # float32 sums over 50,000 pixels drift by 1e-5
        return np.concatenate([batch.mean(axis=(2, 3)), batch.std(axis=(2, 3))], axis=1)
