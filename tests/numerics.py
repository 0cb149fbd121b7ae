"""Comparing float pipeline results computed with different batch shapes or compositions (DESIGN §7).

The same float computation in batches of different shapes (one batch of 16 against two of 8, one candidate alone
against three together, a rank-4 LoRA against the same one zero-padded into a rank-8 slot) takes different CPU
kernels, and the results differ in the last bits, by an amount that depends on the CPU: AVX-512/AMX Xeons differ
from other CPUs. Such results are compared with the measured tolerances below. Exact equality stays for the same
computation run twice with the same shapes, and for pure copies (pixels outside a mask left untouched).

Measured with the tiny test models on a 2-core Intel Xeon with AVX-512 and AMX, under PyTorch's AVX-512, AVX2 and
default (SSE) kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) and 1 or 2 threads:
- UNet noise predictions (|values| up to 3) and latents after several steps (up to 15): at most 2.9e-5 apart;
- decoded 64² uint8 images: at most 4 of 16,384 pixels (0.025 %) apart, never by more than one level (issue 10
  saw 1–2 of the 12,288 values of a 64² RGB image differ on another AVX-512 Xeon).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TENSOR_ATOL = 1e-4
"""Absolute tolerance for tiny-model noise predictions and latents: 3.5× the largest deviation measured (2.9e-5)."""

IMAGE_MAX_LEVEL = 1
"""uint8 images: never more than one level apart ..."""
IMAGE_MAX_SHARE = 1e-3
"""... and only on ≤ 0.1 % of the pixels (4× the largest share measured, 0.025 %)."""


def assert_tensors_close(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Float tensors of the tiny model computed with different batch shapes: equal within ``TENSOR_ATOL``."""

    def message(report: str) -> str:
        return f"{msg}\n{report}".strip()

    torch.testing.assert_close(actual, expected, atol=TENSOR_ATOL, rtol=0, msg=message)


def image_differences(
    actual: np.ndarray | Sequence[np.ndarray], expected: np.ndarray | Sequence[np.ndarray]
) -> tuple[int, int, int]:
    """(largest level difference, pixels that differ in any channel, pixels) over all the [H, W, C] images."""
    got, want = np.asarray(actual).astype(int), np.asarray(expected).astype(int)
    assert got.shape == want.shape and got.ndim >= 3, (got.shape, want.shape)
    per_pixel = np.abs(got - want).max(axis=-1)
    return int(per_pixel.max(initial=0)), int(np.count_nonzero(per_pixel)), int(per_pixel.size)


def assert_images_close(
    actual: np.ndarray | Sequence[np.ndarray], expected: np.ndarray | Sequence[np.ndarray], msg: str = ""
) -> None:
    """Decoded uint8 images (one [H, W, C] or several) that went through float pipelines of different batch shapes:
    at most ``IMAGE_MAX_LEVEL`` apart, on at most ``IMAGE_MAX_SHARE`` of all their pixels."""
    level, differing, pixels = image_differences(actual, expected)
    report = f"{differing} of {pixels} pixels differ, by up to {level} levels {msg}".rstrip()
    assert level <= IMAGE_MAX_LEVEL, report
    assert differing <= IMAGE_MAX_SHARE * pixels, report
