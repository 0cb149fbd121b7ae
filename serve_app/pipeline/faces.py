"""Face detection, landmarks, alignment and recognition with the real models that ship in packages: dlib's HOG
detector, 68-point shape predictor and ResNet face descriptor (``face_recognition_models`` data files) and
OpenCV's Haar cascade as a second detector. The production profile detects with insightface's SCRFD instead and
takes its five keypoints (what insightface aligns ArcFace and inswapper with); dlib's 68-point predictor, whose
training data is licensed for research only, is not used there. The commercial profiles use neither: Google
MediaPipe's Apache-2.0 face detector and 468-point face mesh (``serve_app.pipeline.mediapipe_faces``)."""

from __future__ import annotations

import importlib.util
import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import dlib
import numpy as np

if TYPE_CHECKING:
    from insightface.model_zoo.scrfd import SCRFD

# ArcFace's 112×112 five-point template (insightface order: image-left eye, image-right eye, nose tip, mouth
# corners); every aligned crop in the project uses it, scaled.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
MIN_DETECTION_SIDE = 320
HOG_WINDOW = 80  # dlib's HOG detector finds faces of about 80 px and up
GENERATED_FACE_FRACTION = 1 / 3  # a generated portrait's face spans at least a third of the image side
TIGHT_CROP_PADDING = 0.5
SCRFD_INPUT = (640, 640)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


@dataclass(frozen=True)
class DetectedFace:
    """One face in image pixels: its box (x0, y0, x1, y1) and five points (x, y) in ARCFACE_TEMPLATE's order;
    ``landmarks`` are dlib's 68 points where dlib placed them (not in production), ``mesh`` MediaPipe's 468 where
    MediaPipe did (the commercial profiles)."""

    box: tuple[float, float, float, float]
    five_points: np.ndarray
    landmarks: np.ndarray | None = None
    mesh: np.ndarray | None = None

    @classmethod
    def from_landmarks(cls, box: tuple[float, float, float, float], landmarks: np.ndarray) -> DetectedFace:
        """A face from dlib's 68 points: eye centres, nose tip and mouth corners make its five points."""
        five = np.stack(
            [landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]]
        )
        return cls(box, five.astype(np.float32), landmarks)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    def is_frontal(self, max_yaw: float = 0.35, max_roll_degrees: float = 40.0) -> bool:
        """False for extreme poses: the nose far off the eye midline, or a steeply tilted eye line."""
        left_eye, right_eye, nose = self.five_points[:3]
        eye_span = right_eye - left_eye
        if eye_span[0] <= 0:
            return False
        nose_position = float(np.dot(nose - left_eye, eye_span) / np.dot(eye_span, eye_span))
        roll = abs(np.degrees(np.arctan2(eye_span[1], eye_span[0])))
        return abs(nose_position - 0.5) <= max_yaw and roll <= max_roll_degrees

    def scaled(self, factor: float) -> DetectedFace:
        landmarks = None if self.landmarks is None else self.landmarks * factor
        mesh = None if self.mesh is None else self.mesh * factor
        return DetectedFace(tuple(v * factor for v in self.box), self.five_points * factor, landmarks, mesh)


def dlib_landmarks(face: DetectedFace) -> np.ndarray:
    """The face's 68 dlib points; only dlib-found faces (tiny and full-size profiles) have them."""
    if face.landmarks is None:
        raise ValueError("this face has no dlib landmarks (found by SCRFD); use the production face parser")
    return face.landmarks


def face_outline_points(face: DetectedFace) -> np.ndarray:
    """Jaw line closed over a forehead arc: the brows lifted by a third of the brow-to-chin distance."""
    points = dlib_landmarks(face)
    brows = points[17:27][::-1]
    lift = 0.33 * (points[8, 1] - brows[:, 1].min())
    return np.concatenate([points[0:17], brows - np.array([0.0, lift], dtype=np.float32)])


def dlib_model_path(name: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("the face_recognition_models package is not installed")
    return Path(spec.origin).parent / "models" / name


def similarity(points: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
    """The 2×3 similarity transform (rotation, uniform scale, shift) taking ``points`` onto ``targets``, robust to
    one misplaced point (least median of squares); None for degenerate points."""
    matrix, _ = cv2.estimateAffinePartial2D(points, targets, method=cv2.LMEDS)
    return matrix


def similarity_to_template(points: np.ndarray, size: int) -> np.ndarray:
    """The 2×3 similarity transform taking five face points onto the ArcFace template scaled to ``size``."""
    return similarity(points, ARCFACE_TEMPLATE * (size / 112.0))


def align_face(image: np.ndarray, face: DetectedFace, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned square face crop and the transform that produced it (image → crop)."""
    matrix = similarity_to_template(face.five_points, size)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return crop, matrix


class FaceAnalyzer(Protocol):
    """Finds faces: what the stages use, whichever detector the profile has."""

    def detect(
        self, image: np.ndarray, fallbacks: bool = True, region: Box | None = None, min_face: float | None = None
    ) -> list[DetectedFace]:
        """All faces in an RGB image, largest first. ``fallbacks=False`` runs the first detector alone; ``region``
        (x0, y0, x1, y1) limits the search to that area; ``min_face`` (px) is the smallest face to look for."""

    def detect_generated(self, image: np.ndarray, region: Box | None = None, people: int = 1) -> list[DetectedFace]:
        """Faces in a generated portrait of ``people`` people: no fallbacks (no tight crops there), each face a
        third of the side or more shared among them."""


class RegionFaceAnalyzer(ABC):
    """What both analyzers share: the region cut out, calls taking turns, faces sorted largest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def detect(
        self, image: np.ndarray, fallbacks: bool = True, region: Box | None = None, min_face: float | None = None
    ) -> list[DetectedFace]:
        x0, y0 = (0, 0) if region is None else (max(0, int(region[0])), max(0, int(region[1])))
        x1, y1 = (image.shape[1], image.shape[0]) if region is None else (int(region[2]), int(region[3]))
        # A copy, not a view: dlib's detector reads a strided view past its rows, so what it found in a region
        # depended on memory outside it (tests/test_fusion.py's ranking failed about half the runs).
        area = np.ascontiguousarray(image[y0:y1, x0:x1])
        if area.shape[0] < 16 or area.shape[1] < 16:
            return []
        with self._lock:
            faces = self._find(image, area, (x0, y0), fallbacks, min_face)
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def detect_generated(self, image: np.ndarray, region: Box | None = None, people: int = 1) -> list[DetectedFace]:
        min_face = GENERATED_FACE_FRACTION * image.shape[0] / people
        return self.detect(image, fallbacks=False, region=region, min_face=min_face)

    @abstractmethod
    def _find(
        self, image: np.ndarray, area: np.ndarray, offset: tuple[int, int], fallbacks: bool, min_face: float | None
    ) -> list[DetectedFace]:
        """The faces in ``area``, cut from ``image`` at ``offset``, in ``image``'s coordinates."""


class DlibFaceAnalyzer(RegionFaceAnalyzer):
    """The tiny and full-size profiles' faces: dlib HOG (upsampling small images), HOG on a padded copy (tight crops
    whose face touches the border), then OpenCV's Haar cascade, in that order; dlib's 68 landmarks on each face, and
    dlib's ResNet descriptor (``describe``).

    Thread-safe: dlib's detector is not (concurrent calls crash the process), so calls take turns.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hog = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self._recognizer = dlib.face_recognition_model_v1(
            str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        )
        self._haar = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """dlib's 128-d ResNet descriptor (Euclidean distance < 0.6 ≈ same person)."""
        with self._lock:
            chip = dlib.get_face_chip(image, self._full_object_detection(face), size=150, padding=0.25)
            return np.asarray(self._recognizer.compute_face_descriptor(chip), dtype=np.float32)

    def _find(
        self, image: np.ndarray, area: np.ndarray, offset: tuple[int, int], fallbacks: bool, min_face: float | None
    ) -> list[DetectedFace]:
        """By default the smallest face is what a 320-px view of ``area`` shows."""
        boxes = self._hog_boxes(area, self._upsampling(min_face or self._photo_min_face(area)))
        if fallbacks and not boxes:
            boxes = self._padded_hog_boxes(area) or self._haar_boxes(area)
        x0, y0 = offset
        shifted = [(bx0 + x0, by0 + y0, bx1 + x0, by1 + y0) for bx0, by0, bx1, by1 in boxes]
        return [self._landmarks(image, box) for box in shifted]

    @staticmethod
    def _photo_min_face(image: np.ndarray) -> float:
        """The smallest face worth finding in a photo: what HOG sees in a 320-px view of it."""
        return HOG_WINDOW * min(image.shape[:2]) / MIN_DETECTION_SIDE

    @staticmethod
    def _upsampling(min_face: float) -> int:
        """How many times HOG doubles the image so faces of ``min_face`` px reach its window (at most twice)."""
        return min(2, max(0, math.ceil(math.log2(HOG_WINDOW / max(min_face, 1.0)))))

    def _hog_boxes(self, image: np.ndarray, upsample: int) -> list[Box]:
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in self._hog(image, upsample)]

    def _padded_hog_boxes(self, image: np.ndarray) -> list[Box]:
        pad = int(max(image.shape[:2]) * TIGHT_CROP_PADDING)
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        upsample = self._upsampling(self._photo_min_face(padded))
        return [(x0 - pad, y0 - pad, x1 - pad, y1 - pad) for x0, y0, x1, y1 in self._hog_boxes(padded, upsample)]

    def _haar_boxes(self, image: np.ndarray) -> list[Box]:
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        min_side = max(24, min(image.shape[:2]) // 8)
        found = self._haar.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=6, minSize=(min_side, min_side))
        return [(x, y, x + w, y + h) for x, y, w, h in found]

    def _landmarks(self, image: np.ndarray, box: Box) -> DetectedFace:
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._shape(image, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return DetectedFace.from_landmarks(tuple(float(v) for v in box), points)

    @staticmethod
    def _full_object_detection(face: DetectedFace) -> dlib.full_object_detection:
        rect = dlib.rectangle(*(int(round(v)) for v in face.box))
        return dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in dlib_landmarks(face)])


class ScrfdFaceAnalyzer(RegionFaceAnalyzer):
    """The production profile's faces: insightface's SCRFD boxes and five keypoints, no landmarks (one detector:
    ``fallbacks`` changes nothing)."""

    def __init__(self, detector: SCRFD) -> None:
        super().__init__()
        self._detector = detector

    def _find(
        self, image: np.ndarray, area: np.ndarray, offset: tuple[int, int], fallbacks: bool, min_face: float | None
    ) -> list[DetectedFace]:
        """Scores over SCRFD's threshold, shorter side at least half of ``min_face`` (no minimum by default)."""
        found, keypoints = self._detector.detect(cv2.cvtColor(area, cv2.COLOR_RGB2BGR), input_size=SCRFD_INPUT)
        height, width = area.shape[:2]
        smallest = 0.5 * (min_face or 0.0)
        faces = []
        for row, points in zip(found, keypoints):
            x0, y0, x1, y1 = (float(v) for v in np.clip(row[:4], 0, [width, height, width, height]))
            if min(x1 - x0, y1 - y0) >= smallest:
                dx, dy = offset
                faces.append(DetectedFace((x0 + dx, y0 + dy, x1 + dx, y1 + dy), (points + offset).astype(np.float32)))
        return faces
