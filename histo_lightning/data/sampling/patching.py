"""Patch geometry over images held in memory: boxes, intersection over area, sliding windows, rotated crops.

Generic pieces of patch sampling (used by the TUPAC16 patch index, :mod:`histo_lightning.data.datasets.tupac16`, and
the datasets cutting patches on the fly, :class:`~histo_lightning.data.torch_datasets.PatchDataset`). Points and
boxes are in image pixels, ``(row, col)`` / ``(y0, x0, y1, x1)``.
"""

from __future__ import annotations

import cv2
import numpy as np


def centred_boxes(points: np.ndarray, size: float) -> np.ndarray:
    """``(M, 4)`` boxes ``(y0, x0, y1, x1)`` of side ``size`` centred on ``(row, col)`` points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    half = size / 2.0
    return np.concatenate([p - half, p + half], axis=1)


def ioa(windows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """CHS-Net Eq. 8: ``area(box ∩ window) / area(window)`` for every window (rows) and box (columns).

    Both are ``(·, 4)`` arrays of ``(y0, x0, y1, x1)``; in CHS-Net the windows are the 128×128 "yellow"
    boxes and the boxes the 64×64 "green" ones.
    """
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    dy = np.minimum(w[:, None, 2], b[None, :, 2]) - np.maximum(w[:, None, 0], b[None, :, 0])
    dx = np.minimum(w[:, None, 3], b[None, :, 3]) - np.maximum(w[:, None, 1], b[None, :, 1])
    inter = np.clip(dy, 0, None) * np.clip(dx, 0, None)
    area = (w[:, 2] - w[:, 0]) * (w[:, 3] - w[:, 1])
    return inter / area[:, None]


def window_origins(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """``(K, 2)`` top-left ``(y, x)`` of the ``size`` windows at ``stride`` that fit in the image, row-major."""
    ys = np.arange(0, height - size + 1, stride)
    xs = np.arange(0, width - size + 1, stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def extract_patch(
    image: np.ndarray, cy: float, cx: float, angle: float = 0.0, size: int = 128
) -> np.ndarray:
    """The ``size``×``size`` patch of ``image`` centred at ``(cy, cx)`` rotated by ``angle`` degrees.

    The patch covers rows ``cy - size/2 … cy + size/2 - 1`` (a plain slice, no copy, when ``angle`` is 0,
    the centre whole and the patch inside the image). A rotated patch is resampled (bilinear) from the
    image around it, so its corners show the neighbouring tissue; only where the rotated patch would
    reach beyond the HPF's border is the image mirrored there.
    """
    height, width = image.shape[:2]
    half = size / 2
    whole = float(cy).is_integer() and float(cx).is_integer()
    if angle == 0 and whole and half <= cy <= height - half and half <= cx <= width - half:
        y0, x0 = int(cy - half), int(cx - half)
        return image[y0 : y0 + size, x0 : x0 + size]
    reach = int(np.ceil(half * np.sqrt(2))) + 2
    y0, x0 = int(np.floor(cy)) - reach, int(np.floor(cx)) - reach
    y1, x1 = y0 + 2 * reach + 1, x0 + 2 * reach + 1
    crop = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if any(pad):
        crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), *pad, cv2.BORDER_REFLECT_101)
    # inverse map: source = R(angle) (dest - dest centre) + source centre (pixel centres at integers)
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    rot = np.array([[cos, -sin], [sin, cos]])
    c_out = np.array([half - 0.5, half - 0.5])
    c_src = np.array([cx - 0.5 - x0, cy - 0.5 - y0])
    matrix = np.concatenate([rot, (c_src - rot @ c_out)[:, None]], axis=1)
    return cv2.warpAffine(
        np.ascontiguousarray(crop),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )


__all__ = ["centred_boxes", "extract_patch", "ioa", "window_origins"]
