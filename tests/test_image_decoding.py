"""One decoder (Pillow) for header and pixels; each unusual kind of image converted with a note or refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo_lightning.errors import CorruptImageError
from histo_lightning.stores.image_store import (
    FileImageSource,
    MemmapImageCache,
    inspect_image,
    read_rgb,
)

RGB = np.random.default_rng(0).integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def _write(folder: Path, kind: str) -> Path:
    """An image of ``kind`` holding (a form of) RGB."""
    path = folder / {"tiff": "x.tif", "exif_tiff": "x.tif", "rgb16_tiff": "x.tif"}.get(
        kind, "x.png"
    )
    path = path.with_name(f"{kind}{path.suffix}")
    image = Image.fromarray(RGB)
    if kind == "rgb":
        image.save(path)
    elif kind == "tiff":
        tifffile.imwrite(path, RGB, photometric="rgb", compression="lzw")
    elif kind == "exif_jpeg":
        path = path.with_suffix(".jpg")
        exif = image.getexif()
        exif[0x0112] = 6  # "rotate 90° clockwise to display"
        image.save(path, exif=exif, quality=95)
    elif kind == "exif_tiff":
        exif = image.getexif()
        exif[0x0112] = 8
        image.save(path, exif=exif)
    elif kind == "palette":
        image.convert("P").save(path)
    elif kind == "rgba_opaque":
        image.convert("RGBA").save(path)
    elif kind == "rgba_transparent":
        rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
        rgba[0, 0, 3] = 0
        Image.fromarray(rgba).save(path)
    elif kind == "gray":
        image.convert("L").save(path)
    elif kind == "gray16":
        Image.fromarray(RGB[..., 0].astype(np.uint16) * 257).save(path)
    elif kind == "rgb16_tiff":
        tifffile.imwrite(path, RGB.astype(np.uint16) * 257, photometric="rgb")
    elif kind == "cmyk":
        path = path.with_suffix(".jpg")
        image.convert("CMYK").save(path)
    elif kind == "truncated":
        image.save(path)
        path.write_bytes(path.read_bytes()[:60])
    else:
        raise ValueError(kind)
    return path


# kind -> (accepted, note or refusal text)
CASES = {
    "rgb": (True, None),
    "tiff": (True, None),
    "exif_jpeg": (True, "EXIF orientation 6 applied"),
    "exif_tiff": (True, "EXIF orientation 8 applied"),
    "palette": (True, "palette image converted to RGB"),
    "rgba_opaque": (True, "RGBA: opaque alpha channel dropped"),
    "rgba_transparent": (False, "RGBA with transparent pixels"),
    "gray": (False, "grayscale (mode L)"),
    "gray16": (False, "grayscale (mode I;16"),
    "rgb16_tiff": (False, "16 bits per channel"),
    "cmyk": (False, "unsupported image mode CMYK"),
    "truncated": (False, "cannot decode"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_is_converted_with_a_note_or_refused_by_name(kind: str, tmp_path: Path) -> None:
    path = _write(tmp_path, kind)
    accepted, text = CASES[kind]
    if not accepted:
        with pytest.raises(CorruptImageError) as caught:
            read_rgb(path)
        assert text in str(caught.value) and str(path) in str(caught.value)
        return
    pixels = read_rgb(path)
    info = inspect_image(path)
    # the header and the pixels agree (one decoder); an EXIF orientation turns the image for display
    turned = kind.startswith("exif")
    assert pixels.shape == (info.height, info.width, 3) == ((20, 12, 3) if turned else (12, 20, 3))
    assert pixels.dtype == np.uint8
    assert info.note == text or (text is not None and text in (info.note or ""))
    if kind in ("rgb", "tiff", "rgba_opaque"):
        np.testing.assert_array_equal(pixels, RGB)  # lossless kinds give the stored pixels
    if kind == "exif_tiff":  # orientation 8: rotate 90 degrees anticlockwise to display
        np.testing.assert_array_equal(pixels, np.rot90(RGB))


def test_the_cache_builds_with_converted_images_and_lists_refused_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [_write(tmp_path, kind) for kind in sorted(CASES)]
    with caplog.at_level(logging.WARNING):
        cache = MemmapImageCache.build_or_open(paths, tmp_path, tmp_path / "cache", "toy")
    refused = {Path(b.path).stem for b in cache.bad}
    assert refused == {k for k, (ok, _) in CASES.items() if not ok}
    assert all(
        not b.reason.startswith(str(tmp_path)) for b in cache.bad
    )  # the path is not repeated
    for i, path in enumerate(paths):
        if path.stem not in refused:
            np.testing.assert_array_equal(cache[i], read_rgb(path))
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    converted = {Path(c["path"]).stem for c in manifest["converted"]}
    assert converted == {"exif_jpeg", "exif_tiff", "palette", "rgba_opaque"}
    assert "Converted 4 image(s) on decoding" in caplog.text
    info = json.loads((cache.folder / "cache.json").read_text())
    assert info["kind"] == "images" and info["made_by"]["images"] == len(paths)
    assert (cache.folder / ".last_used").is_file()
    source = FileImageSource.checked(paths, tmp_path, tmp_path / "cache", "toy")
    assert {Path(b.path).stem for b in source.bad} == refused
