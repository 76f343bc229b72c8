"""TUPAC16 mitosis data (auxiliary dataset): reader for the distributed layout and prediction writers.

Layout (``dataset.root`` is the folder that holds the unpacked parts)::

    <root>/mitoses_image_data/<case>/<NN>.tif        HPFs, RGB, 0.25 µm/px; cases 01-73
    <root>/mitoses_ground_truth/<case>/<NN>.csv      no header, one "row,col" per mitosis (row first!)
    <root>/mitoses-test-image-data/<NN>/01.tif       the unlabelled test cases (optional)

An HPF without a CSV, or with an empty one, has no mitosis. Lines may carry more columns (a confidence);
only the first two are read. A header line ``row,col`` is accepted although the release has none. The
case is the patient: all HPFs of a case are in the same fold. Cases 01-23 (AMIDA13) come from one centre,
24-48 and 49-73 from two others (the paper's §4.1).

Predictions are written in the challenge's format, one ``<case>/<NN>.csv`` per HPF with ``row,col,
confidence`` lines (the test set's submissions are ``<case>/01.csv``), and as QuPath-importable GeoJSON
(points as ``x = col, y = row``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from histo_lightning.errors import DatasetLayoutError
from histo_lightning.utils.io import atomic_path, write_text_atomic

IMAGE_DIR = "mitoses_image_data"
LABEL_DIR = "mitoses_ground_truth"
TEST_DIR = "mitoses-test-image-data"
IMAGE_SUFFIXES = (".tif", ".tiff")
CENTRES = ((1, 23), (24, 48), (49, 73))
LAYOUT = (
    f"<root>/{IMAGE_DIR}/<case>/<NN>.tif with <root>/{LABEL_DIR}/<case>/<NN>.csv "
    f"('row,col' lines; no CSV or an empty one = no mitosis), optionally <root>/{TEST_DIR}/<NN>/01.tif"
)
SYNTHETIC_HINT = "for a synthetic stand-in in the same layout use dataset=tupac16_synthetic"


def centre_of(case: str) -> int:
    """The pathology centre (0, 1, 2) of a TUPAC16 case number, -1 if outside 01-73."""
    try:
        number = int(case)
    except ValueError:
        return -1
    return next((c for c, (lo, hi) in enumerate(CENTRES) if lo <= number <= hi), -1)


def read_ground_truth(path: str | Path) -> np.ndarray:
    """``(K, 2)`` float ``(row, col)`` points of a ground-truth CSV; ``(0, 2)`` if missing or empty."""
    path = Path(path)
    if not path.is_file():
        return np.zeros((0, 2))
    points = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f.strip() for f in line.replace(";", ",").split(",")]
        if not line.strip():
            continue
        try:
            points.append((float(fields[0]), float(fields[1])))
        except (ValueError, IndexError):
            if number == 1 and fields[0].lower() in ("row", "y"):
                continue  # a header, although the release has none
            raise DatasetLayoutError(
                f"{path}:{number}: expected 'row,col' numbers, got {line!r}"
            ) from None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) does not exist; expected TUPAC16 mitosis data: {LAYOUT}; "
            f"{SYNTHETIC_HINT}"
        )
    if not (root / IMAGE_DIR).is_dir():
        raise DatasetLayoutError(
            f"dataset root {root} (dataset.root) has no {IMAGE_DIR}/ (and needs {LABEL_DIR}/ beside it); "
            f"expected {LAYOUT}; {SYNTHETIC_HINT}"
        )


def scan_tupac16(root: str | Path) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Every labelled HPF under ``root`` and its mitoses.

    Returns:
        ``hpfs``: one row per HPF, sorted by case then name, columns ``path, case, name, label_path,
        centre, n_mitoses`` (``label_path`` is "" when there is no CSV);
        ``mitoses``: HPF row → ``(K, 2)`` ``(row, col)`` points.
    """
    root = Path(root)
    _check_root(root)
    rows, points = [], {}
    for case_dir in sorted(p for p in (root / IMAGE_DIR).iterdir() if p.is_dir()):
        for image in sorted(p for p in case_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            label = root / LABEL_DIR / case_dir.name / f"{image.stem}.csv"
            mitoses = read_ground_truth(label)
            points[len(rows)] = mitoses
            rows.append(
                {
                    "path": str(image),
                    "case": case_dir.name,
                    "name": image.stem,
                    "label_path": str(label) if label.is_file() else "",
                    "centre": centre_of(case_dir.name),
                    "n_mitoses": len(mitoses),
                }
            )
    if not rows:
        raise DatasetLayoutError(
            f"no HPF images (*.tif) under {root / IMAGE_DIR}; expected {LAYOUT}; {SYNTHETIC_HINT}"
        )
    known = {(r["case"], r["name"]) for r in rows}
    if (root / LABEL_DIR).is_dir():
        orphans = [
            p
            for p in sorted((root / LABEL_DIR).glob("*/*.csv"))
            if (p.parent.name, p.stem) not in known
        ]
        if orphans:
            raise DatasetLayoutError(
                f"{orphans[0]} has no image {IMAGE_DIR}/{orphans[0].parent.name}/{orphans[0].stem}.tif"
                + (f" (and {len(orphans) - 1} more CSVs without image)" if len(orphans) > 1 else "")
                + f"; expected {LAYOUT}"
            )
    return pd.DataFrame(rows), points


def scan_test_set(root: str | Path) -> pd.DataFrame:
    """The unlabelled test HPFs (``mitoses-test-image-data/<NN>/*.tif``): columns ``path, case, name``."""
    folder = Path(root) / TEST_DIR
    if not folder.is_dir():
        return pd.DataFrame(columns=["path", "case", "name"])
    rows = [
        {"path": str(image), "case": case_dir.name, "name": image.stem}
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for image in sorted(p for p in case_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    ]
    return pd.DataFrame(rows, columns=["path", "case", "name"])


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


__all__ = [
    "CENTRES",
    "IMAGE_DIR",
    "LABEL_DIR",
    "LAYOUT",
    "TEST_DIR",
    "centre_of",
    "geojson_points",
    "read_ground_truth",
    "scan_test_set",
    "scan_tupac16",
    "write_challenge_csv",
    "write_geojson",
]
