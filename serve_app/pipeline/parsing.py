"""Face and hair parsing. From landmarks: face outline and facial features drawn from dlib's 68 points (tiny) or
MediaPipe's 468-point mesh (commercial), skin by a colour model fitted to the cheeks, hair by GrabCut seeded with
the face (kept inside MediaPipe's person matte where there is one). From a SegFormer face parser (production).
Masks are float32 in [0, 1], image-sized."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import torch

from serve_app.pipeline.faces import Box, DetectedFace, dlib_landmarks, face_outline_points
from serve_app.pipeline.mediapipe_faces import (
    CHIN,
    FACE_OVAL,
    FOREHEAD,
    LEFT_BROW,
    LEFT_CHEEK,
    LEFT_EYE,
    LEFT_EYE_OUTER,
    LIPS,
    NOSTRILS,
    RIGHT_BROW,
    RIGHT_CHEEK,
    RIGHT_EYE,
    RIGHT_EYE_OUTER,
    PersonMatte,
)

if TYPE_CHECKING:
    from transformers import SegformerForSemanticSegmentation

GRABCUT_MAX_SIDE = 256
SKIN_MAHALANOBIS_LIMIT = 3.5
# The mesh's oval stops about at the hairline, dlib's brows well below it; both outlines are lifted over the
# forehead (dlib's by a third of the brow-to-chin distance, in faces.face_outline_points), the mesh's a little.
MESH_FOREHEAD_LIFT = 0.15
PERSON_MIN = 0.5


@dataclass(frozen=True)
class FaceParsing:
    face: np.ndarray
    skin: np.ndarray
    features: np.ndarray
    hair: np.ndarray


@dataclass(frozen=True)
class FaceGeometry:
    """What landmark parsing draws, in image pixels, whichever model placed the points: the face outline, the
    features to keep sharp (filled polygons; brows drawn as lines where they are a single row of points, as
    dlib's), the cheeks the skin colour is sampled on, the eye span (outer corners) that sizes lines and margins,
    and the chin's height, below which there is no hair."""

    outline: np.ndarray
    features: tuple[np.ndarray, ...]
    brow_lines: tuple[np.ndarray, ...]
    cheeks: tuple[np.ndarray, ...]
    eye_span: float
    chin_y: float


def dlib_geometry(face: DetectedFace) -> FaceGeometry:
    """From dlib's 68 points: cheeks as the triangles jaw, nostril, mouth corner."""
    points = dlib_landmarks(face)
    return FaceGeometry(
        outline=face_outline_points(face),
        features=(points[36:42], points[42:48], points[48:60], points[31:36]),
        brow_lines=(points[17:22], points[22:27]),
        cheeks=(points[[1, 31, 48]], points[[15, 35, 54]]),
        eye_span=float(np.linalg.norm(points[45] - points[36])),
        chin_y=float(points[8, 1]),
    )


def mesh_geometry(face: DetectedFace) -> FaceGeometry:
    """From MediaPipe's mesh, whose brows have an upper and a lower edge: filled like the eyes."""
    if face.mesh is None:
        raise ValueError("this face has no MediaPipe mesh (found by another analyzer); use its own face parser")
    mesh = face.mesh
    contours = (RIGHT_EYE, LEFT_EYE, RIGHT_BROW, LEFT_BROW, LIPS, NOSTRILS)
    return FaceGeometry(
        outline=mesh_outline(mesh),
        features=tuple(mesh[list(contour)] for contour in contours),
        brow_lines=(),
        cheeks=(mesh[list(RIGHT_CHEEK)], mesh[list(LEFT_CHEEK)]),
        eye_span=float(np.linalg.norm(mesh[LEFT_EYE_OUTER] - mesh[RIGHT_EYE_OUTER])),
        chin_y=float(mesh[CHIN, 1]),
    )


def mesh_outline(mesh: np.ndarray) -> np.ndarray:
    """The mesh's face oval, what lies above the eyes stretched upwards (along the face, however tilted) by
    MESH_FOREHEAD_LIFT of its height over them."""
    oval = mesh[list(FACE_OVAL)]
    eyes = (mesh[list(RIGHT_EYE)].mean(0) + mesh[list(LEFT_EYE)].mean(0)) / 2
    up = mesh[FOREHEAD] - mesh[CHIN]
    up = up / max(float(np.linalg.norm(up)), 1e-6)
    height = np.clip((oval - eyes) @ up, 0, None)
    return (oval + MESH_FOREHEAD_LIFT * height[:, None] * up).astype(np.float32)


def polygon_mask(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    return polygons_mask(shape, [polygon])


def polygons_mask(shape: tuple[int, int], polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Each polygon filled on its own: one fillPoly call over several leaves their overlaps empty (even-odd)."""
    mask = np.zeros(shape, np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask


def features_mask(shape: tuple[int, int], geometry: FaceGeometry) -> np.ndarray:
    """Eyes, brows, nostrils and mouth, dilated: what skin smoothing must leave sharp."""
    mask = polygons_mask(shape, geometry.features)
    thickness = max(2, int(geometry.eye_span * 0.08))
    for brow in geometry.brow_lines:
        cv2.polylines(mask, [np.round(brow).astype(np.int32)], False, 1, thickness)
    radius = max(1, int(geometry.eye_span * 0.06))
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))


def skin_colour_mask(image: np.ndarray, cheeks: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` whose chroma (YCrCb) lies close to the colour distribution of the ``cheeks`` mask."""
    chroma = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
    samples = chroma[cheeks.astype(bool)]
    if len(samples) < 10:
        return region
    mean = samples.mean(0)
    inverse = np.linalg.inv(np.cov(samples.T) + np.eye(2) * 4.0)
    offset = chroma - mean
    distance = np.einsum("...i,ij,...j->...", offset, inverse, offset)
    return (region.astype(bool) & (distance < SKIN_MAHALANOBIS_LIMIT**2)).astype(np.uint8)


def hair_mask(image: np.ndarray, box: Box, face_region: np.ndarray, not_hair: np.ndarray, chin_y: float) -> np.ndarray:
    """GrabCut on the head box (the face ``box`` grown by half its width aside and its height above) with the face
    as sure foreground; hair is the foreground above the chin that is not ``not_hair`` (skin and features) —
    so a fringe over the forehead counts as hair."""
    height, width = face_region.shape
    x0, y0, x1, y1 = box
    face_w, face_h = x1 - x0, y1 - y0
    head = (
        int(max(0, x0 - 0.5 * face_w)),
        int(max(0, y0 - 0.8 * face_h)),
        int(min(width, x1 + 0.5 * face_w)),
        int(min(height, y1 + 0.3 * face_h)),
    )
    hx0, hy0, hx1, hy1 = head
    if hx1 - hx0 < 8 or hy1 - hy0 < 8:
        return np.zeros_like(face_region)
    margin_x, margin_y = int(0.25 * (hx1 - hx0)), int(0.25 * (hy1 - hy0))
    cx0, cy0 = max(0, hx0 - margin_x), max(0, hy0 - margin_y)
    cx1, cy1 = min(width, hx1 + margin_x), min(height, hy1 + margin_y)
    crop = image[cy0:cy1, cx0:cx1]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(crop.shape[:2]))
    small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    labels = np.full(small.shape[:2], cv2.GC_BGD, np.uint8)
    rect = [round((v - o) * scale) for v, o in ((hx0, cx0), (hy0, cy0), (hx1, cx0), (hy1, cy0))]
    labels[rect[1] : rect[3], rect[0] : rect[2]] = cv2.GC_PR_FGD
    face_small = cv2.resize(face_region[cy0:cy1, cx0:cx1], small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    labels[face_small.astype(bool)] = cv2.GC_FGD
    # A head filling the whole image (a tight crop) leaves no background: its border is the best guess.
    ring = np.ones_like(labels, bool)
    ring[1:-1, 1:-1] = False
    labels[ring & (labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
    if not np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        return np.zeros_like(face_region)
    cv2.setRNGSeed(0)
    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), labels, None, background, foreground, 3, cv2.GC_INIT_WITH_MASK)
    head_small = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    head_mask = np.zeros_like(face_region)
    head_mask[cy0:cy1, cx0:cx1] = cv2.resize(head_small, crop.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    above_chin = np.zeros_like(face_region)
    above_chin[: int(chin_y), :] = 1
    return head_mask & above_chin & (1 - not_hair)


def parse_geometry(
    image: np.ndarray, box: Box, geometry: FaceGeometry, person: np.ndarray | None = None
) -> FaceParsing:
    """The face's masks from its landmark geometry; hair kept inside ``person`` (a 0/1 matte) when given."""
    shape = image.shape[:2]
    face_region = polygon_mask(shape, geometry.outline)
    features = features_mask(shape, geometry) & face_region
    skin = skin_colour_mask(image, polygons_mask(shape, geometry.cheeks), face_region) & (1 - features)
    hair = hair_mask(image, box, face_region, skin | features, geometry.chin_y)
    if person is not None:
        hair &= person
    return FaceParsing(*(m.astype(np.float32) for m in (face_region, skin, features, hair)))


def parse_face(image: np.ndarray, face: DetectedFace) -> FaceParsing:
    return parse_geometry(image, face.box, dlib_geometry(face))


class FaceParser(Protocol):
    def parse(self, image: np.ndarray, face: DetectedFace) -> FaceParsing:
        """Face, skin, feature and hair masks of ``face`` in an RGB image."""


class LandmarkFaceParser:
    """The tiny profile's parser: landmarks, a skin colour model and GrabCut (``parse_face``)."""

    def parse(self, image: np.ndarray, face: DetectedFace) -> FaceParsing:
        return parse_face(image, face)


class MeshFaceParser:
    """The commercial profiles' parser: regions drawn from MediaPipe's face mesh, skin by the cheeks' colour, hair
    by GrabCut kept inside MediaPipe's person matte (GrabCut alone takes in background of the hair's colour)."""

    def __init__(self, matte: PersonMatte) -> None:
        self.matte = matte

    def parse(self, image: np.ndarray, face: DetectedFace) -> FaceParsing:
        person = (self.matte.matte(image) >= PERSON_MIN).astype(np.uint8)
        return parse_geometry(image, face.box, mesh_geometry(face), person)


class SegformerFaceParser:
    """A SegFormer trained on CelebAMask-HQ's 19 labels (jonathandinu/face-parsing) run on the head crop."""

    FACE = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
    FEATURES = ("eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
    SKIN = ("skin", "nose")
    HAIR = ("hair",)
    INPUT_SIDE = 512
    MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def __init__(self, model: SegformerForSemanticSegmentation) -> None:
        self.model = model
        self.ids = {label: int(index) for index, label in model.config.id2label.items()}

    def parse(self, image: np.ndarray, face: DetectedFace) -> FaceParsing:
        labels = self.labels(image, face)
        masks = (np.isin(labels, [self.ids[name] for name in group]) for group in (self.FACE, self.SKIN, self.FEATURES, self.HAIR))
        face_region, skin, features, hair = (mask.astype(np.float32) for mask in masks)
        return FaceParsing(face_region, skin * (1 - features), features, hair)

    @torch.inference_mode()
    def labels(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """A label per pixel (background outside the head crop)."""
        height, width = image.shape[:2]
        x0, y0, x1, y1 = face.box
        face_w, face_h = x1 - x0, y1 - y0
        left, top = int(max(0, x0 - 0.6 * face_w)), int(max(0, y0 - 0.8 * face_h))
        right, bottom = int(min(width, x1 + 0.6 * face_w)), int(min(height, y1 + 0.4 * face_h))
        crop = image[top:bottom, left:right]
        pixels = cv2.resize(crop, (self.INPUT_SIDE, self.INPUT_SIDE), interpolation=cv2.INTER_LINEAR)
        pixels = (pixels.astype(np.float32) / 255 - self.MEAN) / self.STD
        parameter = next(self.model.parameters())
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)
        logits = self.model(pixel_values=tensor).logits
        logits = torch.nn.functional.interpolate(logits.float(), size=crop.shape[:2], mode="bilinear")
        labels = np.zeros((height, width), np.int64)
        labels[top:bottom, left:right] = logits.argmax(1)[0].cpu().numpy()
        return labels
