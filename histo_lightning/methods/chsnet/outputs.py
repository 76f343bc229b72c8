"""CHS-Net's detections as files: the TUPAC16 challenge format and QuPath-importable GeoJSON (§4.3).

One ``<case>/<NN>.csv`` per HPF with ``row,col,confidence`` lines (the challenge's submission format; the
test set's are ``<case>/01.csv``), and a GeoJSON FeatureCollection of points (``x = col, y = row``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histo_lightning.utils.io import atomic_path, write_text_atomic


def write_challenge_csv(path: str | Path, points: np.ndarray, confidence: np.ndarray) -> Path:
    """``row,col,confidence`` lines (the TUPAC16 submission format), written atomically."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lines = "".join(
        f"{round(r)},{round(c)},{s:.4f}\n" for (r, c), s in zip(points, np.asarray(confidence))
    )
    return write_text_atomic(path, lines)


def geojson_points(
    points: np.ndarray, confidence: np.ndarray, name: str = "Mitosis", color=(220, 30, 30)
) -> dict:
    """A GeoJSON FeatureCollection of point annotations that QuPath imports (x = col, y = row)."""
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [float(c), float(r)]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": name, "color": list(color)},
                "measurements": {"confidence": round(float(s), 4)},
            },
        }
        for (r, c), s in zip(
            np.asarray(points, dtype=np.float64).reshape(-1, 2), np.asarray(confidence)
        )
    ]
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, points: np.ndarray, confidence: np.ndarray) -> Path:
    """:func:`geojson_points` written atomically to ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(geojson_points(points, confidence)) + "\n")
    return path


__all__ = ["geojson_points", "write_challenge_csv", "write_geojson"]
