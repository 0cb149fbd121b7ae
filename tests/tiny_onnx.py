"""Tiny random-weight stand-ins for two production insightface ONNX models, in their file formats.

``write_scrfd_onnx`` mirrors buffalo_l's SCRFD detector ``det_10g.onnx`` and ``write_inswapper_onnx`` mirrors
``inswapper_128.onnx``: same input and output names, shapes, order and value ranges, so insightface's model zoo
routes them to ``SCRFD`` and ``INSwapper`` exactly as it does the real files, and every loading, pre- and
post-processing path runs offline in CI. The weights are seeded random numbers of a few small layers; the outputs
mean nothing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serve_app.pipeline.faces import ARCFACE_TEMPLATE

SEED = 20261125
OPSET = 13
IR_VERSION = 8

SCRFD_INPUT = "input.1"
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
SCRFD_CHANNELS = 8
# (head, det_10g's output names for strides 8/16/32, values per anchor, activation). insightface reads the nine
# outputs by position (index % 3 picks the stride, index // 3 the head), so scores, boxes, keypoints is the order.
SCRFD_HEADS = (
    ("score", ("448", "471", "494"), 1, "Sigmoid"),
    ("bbox", ("451", "474", "497"), 4, "Relu"),
    ("kps", ("454", "477", "500"), 10, None),
)
# Scores are sigmoid(logit + bias): this bias lets a few textured locations of a photo pass det_thresh = 0.5
# (5 on skimage's astronaut) while a blank image gives none.
SCRFD_SCORE_BIAS = -1.6
# Keypoints are the ArcFace template's five points laid over the ≈2-stride box (offsets in stride units from the
# anchor centre), plus a little of the random head, so alignment downstream gets a face-shaped, non-degenerate
# set of points as from the real detector.
SCRFD_KPS_LAYOUT = (ARCFACE_TEMPLATE / 56.0 - 1.0).reshape(-1)
SCRFD_KPS_NOISE = 0.05

SWAPPER_SIZE = 128
EMBEDDING_DIM = 512


def write_scrfd_onnx(path: Path) -> Path:
    """A random-weight detector with ``det_10g.onnx``'s signature: ``input.1`` float 1×3×?×? (normalised BGR→RGB
    by insightface) → nine outputs, per stride s ∈ (8, 16, 32) and 2 anchors per location: sigmoid scores
    [H/s·W/s·2, 1], box distances [·, 4] and keypoint offsets [·, 10] (in stride units, as SCRFD decodes them).
    insightface's model zoo routes it to ``SCRFD`` (9 outputs → 3 strides, 2 anchors, keypoints)."""
    rng = np.random.default_rng(SEED + 20)
    channels, anchors = SCRFD_CHANNELS, SCRFD_ANCHORS

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    initializers = {
        "stem_w": weight(channels, 3, 8, 8),
        "down_w": weight(channels, channels, 2, 2),
        "score_b": np.full(anchors, SCRFD_SCORE_BIAS, dtype=np.float32),
        # Relu(≈1) box distances, about one stride each side, keep decoded boxes well-formed.
        "bbox_b": np.ones(anchors * 4, dtype=np.float32),
        "kps_b": np.tile(SCRFD_KPS_LAYOUT, anchors),
    }
    for head, _, width, _ in SCRFD_HEADS:
        initializers[f"{head}_w"] = weight(anchors * width, channels, 1, 1) * (SCRFD_KPS_NOISE if head == "kps" else 1)
        initializers[f"{head}_rows"] = np.array([-1, width], dtype=np.int64)

    # An 8×8 patch embedding, then two 2×2 downsamplings: floor(H/s) × floor(W/s) cells per stride, the grid
    # insightface lays its anchor centres on.
    nodes = [
        helper.make_node("Conv", [SCRFD_INPUT, "stem_w"], ["stem"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["stem"], ["features_8"]),
    ]
    for previous, stride in itertools.pairwise(SCRFD_STRIDES):
        nodes += [
            helper.make_node(
                "Conv", [f"features_{previous}", "down_w"], [f"down_{stride}"], kernel_shape=[2, 2], strides=[2, 2]
            ),
            helper.make_node("Relu", [f"down_{stride}"], [f"features_{stride}"]),
        ]

    outputs = []
    for head, names, width, activation in SCRFD_HEADS:
        for stride, name in zip(SCRFD_STRIDES, names):
            prefix = f"{head}_{stride}"
            nodes.append(helper.make_node("Conv", [f"features_{stride}", f"{head}_w", f"{head}_b"], [prefix]))
            if activation:
                nodes.append(helper.make_node(activation, [prefix], [f"{prefix}_act"]))
                prefix = f"{prefix}_act"
            # NCHW → NHWC, then one row per (y, x, anchor): the order of insightface's anchor centres.
            nodes += [
                helper.make_node("Transpose", [prefix], [f"{prefix}_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{prefix}_nhwc", f"{head}_rows"], [name]),
            ]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"anchors_{stride}", width]))

    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        # det_10g names both spatial axes "?".
        [helper.make_tensor_value_info(SCRFD_INPUT, TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs,
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    return _save(graph, path)


def write_inswapper_onnx(path: Path) -> Path:
    """A random-weight face swapper with ``inswapper_128.onnx``'s signature: ``target`` float 1×3×128×128 (the
    aligned face, RGB in [0, 1]) and ``source`` float 1×512 (the identity latent) → ``output`` float 1×3×128×128
    (RGB in [0, 1]). As in the real file, the last initializer is the 512×512 ``emap`` that ``INSwapper`` multiplies
    the source face's normed embedding with before the graph sees it. insightface's model zoo routes it to
    ``INSwapper`` (two inputs, 128×128)."""
    rng = np.random.default_rng(SEED + 21)
    # sigmoid(4·x − 2) roughly follows x on [0, 1], so the output still resembles the target face; a small random
    # mix of neighbouring pixels and a per-channel shift from the source latent make it depend on both inputs.
    conv = rng.standard_normal((3, 3, 3, 3)).astype(np.float32) * 0.05
    conv[np.arange(3), np.arange(3), 1, 1] += 4.0
    initializers = [
        numpy_helper.from_array(conv, "target_w"),
        numpy_helper.from_array(np.full(3, -2.0, dtype=np.float32), "target_b"),
        numpy_helper.from_array(
            (rng.standard_normal((EMBEDDING_DIM, 3)) / np.sqrt(EMBEDDING_DIM)).astype(np.float32), "source_w"
        ),
        numpy_helper.from_array(np.array([1, 3, 1, 1], dtype=np.int64), "shift_shape"),
        # Read by INSwapper by position (the last initializer); no node uses it, so onnxruntime logs a warning
        # that it drops it from the session.
        numpy_helper.from_array(
            (rng.standard_normal((EMBEDDING_DIM, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)).astype(np.float32), "emap"
        ),
    ]
    nodes = [
        helper.make_node("Conv", ["target", "target_w", "target_b"], ["mixed"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["source", "source_w"], ["shift_flat"]),
        helper.make_node("Reshape", ["shift_flat", "shift_shape"], ["shift"]),
        helper.make_node("Add", ["mixed", "shift"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    image = [1, 3, SWAPPER_SIZE, SWAPPER_SIZE]
    graph = helper.make_graph(
        nodes,
        "tiny_inswapper",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, EMBEDDING_DIM]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, image)],
        initializers,
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
