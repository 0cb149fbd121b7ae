from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from insightface.app.common import Face
from insightface.model_zoo import get_model
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils.face_align import arcface_dst
from onnx import numpy_helper
from tiny_onnx import write_inswapper_onnx, write_scrfd_onnx

CPU = ["CPUExecutionProvider"]
DET_10G_OUTPUTS = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]


@pytest.fixture
def astronaut_bgr(astronaut: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)


def test_scrfd_signature_matches_det_10g(tmp_path):
    session = onnxruntime.InferenceSession(str(write_scrfd_onnx(tmp_path / "det_10g.onnx")), providers=CPU)
    (image,) = session.get_inputs()
    assert (image.name, image.shape) == ("input.1", [1, 3, "?", "?"])
    assert [output.name for output in session.get_outputs()] == DET_10G_OUTPUTS

    height, width = 480, 640
    outputs = session.run(None, {"input.1": np.zeros((1, 3, height, width), dtype=np.float32)})
    expected = [
        ((height // stride) * (width // stride) * 2, columns) for columns in (1, 4, 10) for stride in (8, 16, 32)
    ]
    assert [output.shape for output in outputs] == expected
    scores = np.concatenate(outputs[:3])
    assert np.all((scores > 0) & (scores < 1))


def test_scrfd_detects_through_the_model_zoo(tmp_path, astronaut_bgr):
    detector = get_model(str(write_scrfd_onnx(tmp_path / "det_10g.onnx")), providers=CPU)
    assert type(detector) is SCRFD
    assert (detector.fmc, detector._num_anchors, detector.use_kps) == (3, 2, True)
    detector.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5)

    bboxes, kpss = detector.detect(astronaut_bgr, input_size=(640, 640))
    assert bboxes.dtype == kpss.dtype == np.float32
    assert bboxes.ndim == 2 and bboxes.shape[1] == 5 and len(bboxes) > 0
    assert kpss.shape == (len(bboxes), 5, 2)
    assert np.all(bboxes[:, 4] >= 0.5) and np.all(bboxes[:, 2:4] > bboxes[:, :2])

    bboxes, kpss = detector.detect(np.zeros((480, 640, 3), dtype=np.uint8), input_size=(640, 640))
    assert bboxes.shape == (0, 5) and kpss.shape == (0, 5, 2)


def test_inswapper_signature_matches_inswapper_128(tmp_path):
    path = write_inswapper_onnx(tmp_path / "inswapper_128.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=CPU)
    assert [(tensor.name, tensor.shape) for tensor in session.get_inputs()] == [
        ("target", [1, 3, 128, 128]),
        ("source", [1, 512]),
    ]
    assert [(tensor.name, tensor.shape) for tensor in session.get_outputs()] == [("output", [1, 3, 128, 128])]
    assert numpy_helper.to_array(onnx.load(path).graph.initializer[-1]).shape == (512, 512)

    rng = np.random.default_rng(0)
    target = rng.random((1, 3, 128, 128), dtype=np.float32)
    sources = rng.standard_normal((2, 1, 512)).astype(np.float32)
    first, second = (session.run(None, {"target": target, "source": source})[0] for source in sources)
    assert first.shape == (1, 3, 128, 128) and first.dtype == np.float32
    assert np.all((first > 0) & (first < 1))
    assert not np.allclose(first, second)


def test_inswapper_swaps_through_the_model_zoo(tmp_path, astronaut_bgr):
    swapper = get_model(str(write_inswapper_onnx(tmp_path / "inswapper_128.onnx")), providers=CPU)
    assert type(swapper) is INSwapper
    assert swapper.emap.shape == (512, 512)

    # INSwapper reads only the target's kps (5×2, aligned to 128² with norm_crop2) and the source's
    # normed_embedding, a Face property computed from ``embedding``.
    target = Face(bbox=np.array([150, 60, 262, 172], dtype=np.float32), kps=arcface_dst + (150, 60), det_score=0.9)
    source = Face(embedding=np.random.default_rng(1).standard_normal(512).astype(np.float32))

    swapped = swapper.get(astronaut_bgr, target, source, paste_back=True)
    assert swapped.shape == astronaut_bgr.shape and swapped.dtype == np.uint8
    assert not np.array_equal(swapped, astronaut_bgr)

    face, matrix = swapper.get(astronaut_bgr, target, source, paste_back=False)
    assert face.shape == (128, 128, 3) and face.dtype == np.uint8
    assert matrix.shape == (2, 3)
