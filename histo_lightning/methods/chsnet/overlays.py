"""HPF overlays of a detection result: ground truth, true and false positives, misses in distinct colours."""

from __future__ import annotations

import cv2
import numpy as np

# RGB colours: true positive (green), false positive (red), missed mitosis (blue), found mitosis (white)
COLOURS = {
    "tp": (30, 200, 60),
    "fp": (230, 30, 30),
    "missed": (40, 110, 255),
    "found": (255, 255, 255),
}


def detection_overlay(
    image: np.ndarray,
    detections: np.ndarray,
    detection_is_tp: np.ndarray,
    gt: np.ndarray,
    gt_found: np.ndarray,
    radius_px: float,
    max_side: int = 1024,
    title: str = "",
) -> np.ndarray:
    """The ``(H, W, 3)`` RGB HPF with circles of ``radius_px`` (the match radius), downscaled to ``max_side``.

    Ground-truth mitoses are thick circles, white when found and blue when missed; detections are thin
    circles with a centre dot, green when true and red when false.
    """
    scale = min(1.0, max_side / max(image.shape[:2]))
    canvas = np.ascontiguousarray(image)
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        canvas = cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)
    else:
        canvas = canvas.copy()
    r = max(3, round(radius_px * scale))
    for (row, col), found in zip(np.asarray(gt).reshape(-1, 2), gt_found):
        centre = (round(col * scale), round(row * scale))
        cv2.circle(canvas, centre, r + 3, COLOURS["found" if found else "missed"], 3, cv2.LINE_AA)
    for (row, col), ok in zip(np.asarray(detections).reshape(-1, 2), detection_is_tp):
        centre = (round(col * scale), round(row * scale))
        colour = COLOURS["tp" if ok else "fp"]
        cv2.circle(canvas, centre, r, colour, 2, cv2.LINE_AA)
        cv2.circle(canvas, centre, 2, colour, -1, cv2.LINE_AA)
    if title:
        (width, height), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        cv2.rectangle(canvas, (0, 0), (width + 16, height + 16), (0, 0, 0), -1)
        cv2.putText(
            canvas, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA
        )
    return canvas


__all__ = ["COLOURS", "detection_overlay"]
