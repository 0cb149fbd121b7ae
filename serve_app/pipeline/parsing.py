"""Face and hair parsing. From landmarks (tiny): face outline and facial features from the 68 points, skin by a
colour model fitted to the cheeks, hair by GrabCut seeded with the face. From a SegFormer face parser
(production). Masks are float32 in [0, 1], image-sized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import torch

from serve_app.pipeline.faces import DetectedFace, dlib_landmarks, face_outline_points

if TYPE_CHECKING:
    from transformers import SegformerForSemanticSegmentation

GRABCUT_MAX_SIDE = 256
SKIN_MAHALANOBIS_LIMIT = 3.5


@dataclass(frozen=True)
class FaceParsing:
    face: np.ndarray
    skin: np.ndarray
    features: np.ndarray
    hair: np.ndarray


def polygon_mask(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask


def features_mask(shape: tuple[int, int], face: DetectedFace) -> np.ndarray:
    """Eyes, brows, nostrils and mouth, dilated: what skin smoothing must leave sharp."""
    points = dlib_landmarks(face)
    mask = np.zeros(shape, np.uint8)
    for polygon in (points[36:42], points[42:48], points[48:60], points[31:36]):
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    eye_span = float(np.linalg.norm(points[45] - points[36]))
    thickness = max(2, int(eye_span * 0.08))
    for brow in (points[17:22], points[22:27]):
        cv2.polylines(mask, [np.round(brow).astype(np.int32)], False, 1, thickness)
    radius = max(1, int(eye_span * 0.06))
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))


def skin_colour_mask(image: np.ndarray, face: DetectedFace, region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` whose chroma (YCrCb) lies close to the cheeks' colour distribution."""
    points = dlib_landmarks(face)
    cheeks = np.zeros(region.shape, np.uint8)
    for a, b, c in ((1, 31, 48), (15, 35, 54)):
        cv2.fillPoly(cheeks, [np.round(points[[a, b, c]]).astype(np.int32)], 1)
    chroma = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
    samples = chroma[cheeks.astype(bool)]
    if len(samples) < 10:
        return region
    mean = samples.mean(0)
    inverse = np.linalg.inv(np.cov(samples.T) + np.eye(2) * 4.0)
    offset = chroma - mean
    distance = np.einsum("...i,ij,...j->...", offset, inverse, offset)
    return (region.astype(bool) & (distance < SKIN_MAHALANOBIS_LIMIT**2)).astype(np.uint8)


def hair_mask(image: np.ndarray, face: DetectedFace, face_region: np.ndarray, not_hair: np.ndarray) -> np.ndarray:
    """GrabCut on the head box (the face grown by half its width aside and its height above) with the face
    as sure foreground; hair is the foreground above the chin that is not ``not_hair`` (skin and features) —
    so a fringe over the forehead counts as hair."""
    height, width = face_region.shape
    x0, y0, x1, y1 = face.box
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
    above_chin[: int(dlib_landmarks(face)[8, 1]), :] = 1
    return head_mask & above_chin & (1 - not_hair)


def parse_face(image: np.ndarray, face: DetectedFace) -> FaceParsing:
    shape = image.shape[:2]
    face_region = polygon_mask(shape, face_outline_points(face))
    features = features_mask(shape, face) & face_region
    skin = skin_colour_mask(image, face, face_region) & (1 - features)
    hair = hair_mask(image, face, face_region, skin | features)
    return FaceParsing(*(m.astype(np.float32) for m in (face_region, skin, features, hair)))


class FaceParser(Protocol):
    def parse(self, image: np.ndarray, face: DetectedFace) -> FaceParsing:
        """Face, skin, feature and hair masks of ``face`` in an RGB image."""


class LandmarkFaceParser:
    """The tiny profile's parser: landmarks, a skin colour model and GrabCut (``parse_face``)."""

    def parse(self, image: np.ndarray, face: DetectedFace) -> FaceParsing:
        return parse_face(image, face)


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
