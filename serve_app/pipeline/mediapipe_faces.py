"""Faces, a 468-point face mesh and a person matte from Google MediaPipe's Apache-2.0 models (vendored in
``serve_app/assets/mediapipe``, see the NOTICE there) run through LiteRT: what the commercial profiles use, since
insightface's and dlib's landmark weights bar commercial use. The ``mediapipe`` package itself cannot be installed
beside the project's pins (protobuf), so the steps of its face_detection and face_landmark graphs around the models
(anchors, letterbox, weighted NMS, the rotated face crop) are redone here."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from serve_app.pipeline.faces import Box, DetectedFace, RegionFaceAnalyzer

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "mediapipe"
SHORT_RANGE_MODEL = ASSETS / "face_detection_short_range.tflite"
FULL_RANGE_MODEL = ASSETS / "face_detection_full_range_sparse.tflite"
FACE_MESH_MODEL = ASSETS / "face_landmark.tflite"
PERSON_MATTE_MODEL = ASSETS / "selfie_segmentation.tflite"

# Mesh topology (after MediaPipe's face_mesh_connections) as closed contours; "right" is the subject's: image-left.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
NOSTRILS = (64, 98, 97, 2, 326, 327, 294)  # the nose's base, wing to wing: closed, a crescent over the nostrils
RIGHT_CHEEK = (123, 50, 36, 205, 187, 147)  # the cheekbone's skin, clear of the face's edge
LEFT_CHEEK = (352, 280, 266, 425, 411, 376)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
# Point 4 for the nose tip (point 1, the most forward, lies below dlib's tip) and the mouth corners: where dlib's
# five points are, so that crops aligned from either land alike (tests/test_mediapipe_faces.py measures it).
NOSE_TIP, RIGHT_MOUTH_CORNER, LEFT_MOUTH_CORNER = 4, 61, 291
FOREHEAD, CHIN = 10, 152

FACE_FLAG_MIN = 0.5  # MediaPipe's face_landmark graph drops meshes whose face-presence score is lower
ROI_SCALE = 1.5  # the face crop: the detection box's longer side, grown by half (FaceDetectionFrontDetectionToRoi)
NMS_IOU = 0.3


@dataclass(frozen=True)
class BlazeFaceConfig:
    """A BlazeFace model's SSD anchor layout and score threshold (MediaPipe's face_detection_*_range.pbtxt)."""

    strides: tuple[int, ...]
    anchors_per_layer: int
    min_score: float


SHORT_RANGE = BlazeFaceConfig((8, 16, 16, 16), 2, 0.5)
FULL_RANGE = BlazeFaceConfig((4,), 1, 0.6)


class TfliteModel:
    """One LiteRT interpreter. Calls take turns: an interpreter holds its input and output tensors between calls,
    so it is not thread-safe."""

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        (model_input,) = self._interpreter.get_input_details()
        self._input = model_input["index"]
        self.input_side = int(model_input["shape"][1])
        self._outputs = [detail["index"] for detail in self._interpreter.get_output_details()]
        self._lock = threading.Lock()

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The outputs (copies, batch axis dropped) for one float32 side×side×3 input."""
        with self._lock:
            self._interpreter.set_tensor(self._input, pixels[None].astype(np.float32))
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(index)[0] for index in self._outputs]


@dataclass(frozen=True)
class Detection:
    """A BlazeFace detection in image pixels: its box and six keypoints (subject's right eye, left eye, nose tip,
    mouth centre, right and left ear tragion)."""

    box: Box
    keypoints: np.ndarray
    score: float

    def shifted(self, offset: tuple[int, int]) -> Detection:
        dx, dy = offset
        x0, y0, x1, y1 = self.box
        shift = np.array(offset, np.float32)
        return Detection((x0 + dx, y0 + dy, x1 + dx, y1 + dy), self.keypoints + shift, self.score)


def ssd_anchors(side: int, strides: Sequence[int], anchors_per_layer: int) -> np.ndarray:
    """Anchor centres (N×2, in [0, 1]) in the order of MediaPipe's SsdAnchorsCalculator: layers of equal stride
    share one grid whose cells hold all their anchors. BlazeFace's anchors have a fixed size: centres suffice."""
    grids = []
    for stride in dict.fromkeys(strides):
        cells = math.ceil(side / stride)
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], -1).reshape(-1, 1, 2)
        grids.append(np.repeat(centres, anchors_per_layer * strides.count(stride), axis=1).reshape(-1, 2))
    return np.concatenate(grids).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Scores from logits clipped to ±100, as MediaPipe's score_clipping_thresh (in float64: exp(100) overflows
    float32)."""
    return 1 / (1 + np.exp(-np.clip(np.asarray(logits, np.float64), -100, 100)))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum((box[2] - box[0]) * (box[3] - box[1]) + areas - inter, 1e-9)


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: each cluster of boxes overlapping the best remaining one
    becomes their score-weighted mean (steadier than keeping the best box alone), scored by the best."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    merged = []
    while len(scores):
        cluster = iou(boxes[0], boxes) > NMS_IOU
        weights = scores[cluster] / scores[cluster].sum()
        merged.append((
            np.tensordot(weights, boxes[cluster], 1),
            np.tensordot(weights, keypoints[cluster], 1),
            float(scores[0]),
        ))
        boxes, keypoints, scores = boxes[~cluster], keypoints[~cluster], scores[~cluster]
    return merged


def letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, float, np.ndarray]:
    """``image`` scaled to fit a black side×side square, centred, as MediaPipe's detector input (area-averaged:
    a group photo's small faces, shrunk with plain bilinear sampling, lose a third of their score); the scale and
    the (x, y) shift that map image pixels into it."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left, top = (side - size[0]) // 2, (side - size[1]) // 2
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[top : top + size[1], left : left + size[0]] = resized
    return pixels, scale, np.array([left, top], np.float32)


class BlazeFace:
    """MediaPipe's face detector: the image letterboxed into the model's square input (in [-1, 1]), boxes and
    keypoints decoded from the anchors, weighted NMS."""

    def __init__(self, path: Path, config: BlazeFaceConfig, num_threads: int | None = None) -> None:
        self._model = TfliteModel(path, num_threads)
        self._config = config
        self._anchors = ssd_anchors(self._model.input_side, config.strides, config.anchors_per_layer)

    def detect(self, image: np.ndarray) -> list[Detection]:
        side = self._model.input_side
        pixels, scale, shift = letterbox(image, side)
        outputs = self._model.run(pixels.astype(np.float32) / 127.5 - 1)
        raw, logits = sorted(outputs, key=lambda output: -output.shape[-1])  # (N, 16) regressors, (N, 1) scores
        scores = sigmoid(logits[:, 0])
        keep = scores >= self._config.min_score
        centres = self._anchors[keep] * side
        offsets = raw[keep]
        half = offsets[:, 2:4] / 2
        boxes = np.concatenate([centres + offsets[:, :2] - half, centres + offsets[:, :2] + half], 1)
        keypoints = offsets[:, 4:].reshape(-1, 6, 2) + centres[:, None]
        detections = []
        for box, points, score in weighted_nms(boxes, keypoints, scores[keep]):
            corners = (box.reshape(2, 2) - shift) / scale
            detections.append(Detection(tuple(float(v) for v in corners.ravel()), (points - shift) / scale, score))
        return detections


class FaceMesh:
    """MediaPipe's 468-point face mesh on the face crop a detection gives: a square around its box, grown by half,
    turned so the eyes are level (input in [0, 1]); the points mapped back into the image."""

    def __init__(self, path: Path = FACE_MESH_MODEL, num_threads: int | None = None) -> None:
        self._model = TfliteModel(path, num_threads)

    def landmarks(self, image: np.ndarray, detection: Detection) -> tuple[np.ndarray, float]:
        """The mesh (468×2, image pixels) and the model's face-presence score in [0, 1]."""
        x0, y0, x1, y1 = detection.box
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
        eye_line = detection.keypoints[1] - detection.keypoints[0]
        crop_to_image = self.crop_matrix(centre, ROI_SCALE * max(x1 - x0, y1 - y0), eye_line)
        # The matrix maps continuous coordinates (pixel centres at +0.5), as the model's points are; warpAffine
        # and the image's points index pixels.
        sampling = crop_to_image.copy()
        sampling[:, 2] += crop_to_image[:, :2].sum(1) / 2 - 0.5
        side = self._model.input_side
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        crop = cv2.warpAffine(image, sampling, (side, side), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        raw, flag = self._model.run(crop.astype(np.float32) / 255)
        mesh = raw.reshape(-1, 3)[:, :2] @ crop_to_image[:, :2].T + crop_to_image[:, 2] - 0.5
        return mesh.astype(np.float32), float(sigmoid(flag.ravel()[0]))

    def crop_matrix(self, centre: np.ndarray, size: float, eye_line: np.ndarray) -> np.ndarray:
        """The 2×3 transform from the model's input pixels to the image: a square of ``size`` px about
        ``centre`` whose x axis runs along ``eye_line``."""
        side = self._model.input_side
        along = eye_line / max(float(np.linalg.norm(eye_line)), 1e-6) * size / side
        across = np.array([-along[1], along[0]], np.float32)
        return np.column_stack([along, across, centre - (along + across) * side / 2]).astype(np.float32)


def face_from_mesh(mesh: np.ndarray) -> DetectedFace:
    """A face from its mesh: the box spans the mesh across and brows to chin down (as dlib's box does: the mesh
    also covers the forehead), five points as dlib's (eye centres, nose tip, mouth corners)."""
    five = np.stack([
        mesh[list(RIGHT_EYE)].mean(0),
        mesh[list(LEFT_EYE)].mean(0),
        mesh[NOSE_TIP],
        mesh[RIGHT_MOUTH_CORNER],
        mesh[LEFT_MOUTH_CORNER],
    ])
    brows_top = float(mesh[list(RIGHT_BROW + LEFT_BROW), 1].min())
    box = (float(mesh[:, 0].min()), brows_top, float(mesh[:, 0].max()), float(mesh[:, 1].max()))
    return DetectedFace(box, five.astype(np.float32), mesh=mesh)


class MediaPipeFaceAnalyzer(RegionFaceAnalyzer):
    """The commercial profiles' faces: BlazeFace's short-range model (faces of a portrait or selfie), its
    full-range model as the fallback (small, far faces: group photos), then the face mesh on each detection,
    which gives the face's box, five points and ``mesh``; detections the mesh model sees no face in are dropped.

    The models default to the vendored files; a profile passes the paths its manifest checked. Thread-safe: calls
    take turns (RegionFaceAnalyzer), as each model does on its own."""

    def __init__(
        self,
        short_range: Path = SHORT_RANGE_MODEL,
        full_range: Path = FULL_RANGE_MODEL,
        landmarker: Path = FACE_MESH_MODEL,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self._short_range = BlazeFace(short_range, SHORT_RANGE, num_threads)
        self._full_range = BlazeFace(full_range, FULL_RANGE, num_threads)
        self._mesh = FaceMesh(landmarker, num_threads)

    def _find(
        self, image: np.ndarray, area: np.ndarray, offset: tuple[int, int], fallbacks: bool, min_face: float | None
    ) -> list[DetectedFace]:
        """Shorter side at least half of ``min_face`` (no minimum by default), as ScrfdFaceAnalyzer's. The mesh
        reads the whole image: a face at the region's edge keeps its context."""
        detections = self._short_range.detect(area)
        if fallbacks and not detections:
            detections = self._full_range.detect(area)
        smallest = 0.5 * (min_face or 0.0)
        faces = []
        for detection in detections:
            mesh, presence = self._mesh.landmarks(image, detection.shifted(offset))
            face = face_from_mesh(mesh)
            x0, y0, x1, y1 = face.box
            if presence >= FACE_FLAG_MIN and min(x1 - x0, y1 - y0) >= smallest:
                faces.append(face)
        return faces


class PersonMatte:
    """MediaPipe's selfie segmentation: how likely each pixel is a person's (hair and clothes included), what
    keeps GrabCut's hair off a background of the hair's colour."""

    def __init__(self, path: Path = PERSON_MATTE_MODEL, num_threads: int | None = None) -> None:
        self._model = TfliteModel(path, num_threads)

    def matte(self, image: np.ndarray) -> np.ndarray:
        """Float32 in [0, 1], ``image``-sized (the model sees it squashed to its square input, as MediaPipe does)."""
        side = self._model.input_side
        pixels = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        (probability,) = self._model.run(pixels.astype(np.float32) / 255)
        matte = cv2.resize(probability[..., 0], image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        return np.clip(matte, 0, 1).astype(np.float32)
