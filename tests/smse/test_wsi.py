"""Whole slides: synthetic PAIP as openslide sees it, tiled masks, mask-based patch labels where the answer is
known, the per-slide index cache, one openslide handle per DataLoader worker, corrupt slides, PAIP end to end."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from torch.utils.data import DataLoader

from histo_lightning.data.datasets.paip import PaipDataModule, scan_paip
from histo_lightning.data.synthetic.paip import (
    SyntheticPaipConfig,
    generate_paip,
    write_mask,
    write_slide,
)
from histo_lightning.data.wsi import (
    PatchSpec,
    SlideHandles,
    SlidePatchSource,
    TiledMask,
    grid_candidates,
    load_or_sample_patches,
    open_slide,
    sample_patches,
    select_patches,
    slide_info,
)
from histo_lightning.errors import ConfigError, CorruptImageError, DatasetLayoutError
from histo_lightning.pipelines.runner import run_pipeline

TINY_PAIP = {"n_slides": 4, "height": 1024, "width": 1024}
SMALL_PATCHES = {"patch_size": 64, "stride": 64, "n_per_slide": 30, "tissue_downsample": 16.0}


@pytest.fixture(scope="session")
def paip_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic PAIP tree (4 slides of 1024² px), generated once per session."""
    return generate_paip(
        tmp_path_factory.mktemp("paip") / "paip2019",
        SyntheticPaipConfig(**TINY_PAIP),
        progress=False,
    )


# ---- a slide whose answer is known ----------------------------------------------------------------------
def known_slide(folder: Path, slide_format: str = "tiff") -> tuple[Path, Path]:
    """1024² px: tissue (pink, noisy) in columns < 768, glass right of it; tumour mask in rows < 256 and a
    band in rows 256–335 (a 128-px patch in grid row 2 is 62.5 % masked and its centre row 320 is inside)."""
    rng = np.random.default_rng(0)
    rgb = np.full((1024, 1024, 3), 245, np.uint8)
    pink = np.array([200, 110, 160], np.float32)
    rgb[:, :768] = np.clip(pink + rng.normal(0, 6, (1024, 768, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((1024, 1024), np.uint8)
    mask[:256] = 1
    mask[256:336] = 1
    folder.mkdir(parents=True, exist_ok=True)
    slide = folder / ("known.svs" if slide_format == "svs" else "known.tif")
    write_slide(slide, rgb, 0.5, slide_format, 90)
    write_mask(folder / "known_viable.tif", mask)
    return slide, folder / "known_viable.tif"


@pytest.mark.parametrize(
    ("rule", "fraction", "expected_rows"),
    [
        (
            "fraction",
            1.0,
            {0: 1, 1: 1, 2: 0, 3: 0},
        ),  # the paper read literally: wholly inside the area
        ("fraction", 0.5, {0: 1, 1: 1, 2: 1, 3: 0}),
        ("centre", 1.0, {0: 1, 1: 1, 2: 1, 3: 0}),
        ("pure", 1.0, {0: 1, 1: 1, 2: -1, 3: 0}),  # the mixed border row is left out
    ],
)
def test_mask_labels_on_a_slide_with_a_known_answer(
    tmp_path: Path, rule: str, fraction: float, expected_rows: dict[int, int]
) -> None:
    slide_path, mask_path = known_slide(tmp_path)
    spec = PatchSpec(
        patch_size=128,
        stride=128,
        label_rule=rule,
        tumour_fraction=fraction,
        tissue_downsample=16.0,
    )
    slide = open_slide(slide_path)
    with TiledMask(mask_path) as mask:
        grid = grid_candidates(slide, mask, spec)
    slide.close()
    assert len(grid) == 64  # 8 x 8 patches
    grid["row"], grid["col"] = grid["y"] // 128, grid["x"] // 128
    expected_fraction = {0: 1.0, 1: 1.0, 2: 80 / 128, 3: 0.0}
    for row, label in expected_rows.items():
        rows = grid[grid["row"] == row]
        assert (rows["label"] == label).all(), (rule, row, rows["label"].tolist())
        assert rows["tumour_fraction"].to_numpy() == pytest.approx(expected_fraction[row])
    # tissue (Otsu on saturation) covers columns < 768 = patch columns 0-5, glass the rest
    assert (grid.loc[grid["col"] <= 5, "tissue"] > 0.9).all()
    assert (grid.loc[grid["col"] >= 6, "tissue"] < 0.1).all()

    kept = sample_patches(
        slide_path, mask_path, spec.__class__(**{**spec.__dict__, "n_per_slide": 20})
    )
    assert (kept["x"] < 768).all()  # never glass
    assert set(kept["label"]) <= {0, 1}


def test_balanced_selection_and_shortfall() -> None:
    candidates = pd.DataFrame(
        {"x": np.arange(100), "y": 0, "tissue": 1.0, "label": [1] * 10 + [0] * 90}
    )
    spec = PatchSpec(n_per_slide=40)
    chosen = select_patches(candidates, spec, "s")
    assert chosen["label"].value_counts().to_dict() == {
        1: 10,
        0: 20,
    }  # no filling: as the paper's Table IX
    filled = select_patches(candidates, PatchSpec(n_per_slide=40, fill_shortfall=True), "s")
    assert filled["label"].value_counts().to_dict() == {1: 10, 0: 30}
    again = select_patches(candidates, spec, "s")
    pd.testing.assert_frame_equal(chosen, again)  # seeded per slide
    assert not chosen.equals(select_patches(candidates, spec, "other slide"))
    with pytest.raises(ConfigError, match="label_rule"):
        PatchSpec(label_rule="majority")


# ---- what openslide and tifffile see --------------------------------------------------------------------
@pytest.mark.parametrize("slide_format", ["svs", "tiff"])
def test_openslide_reads_the_synthetic_pyramid_with_mpp(tmp_path: Path, slide_format: str) -> None:
    slide_path, _ = known_slide(tmp_path, slide_format)
    info = slide_info(open_slide(slide_path), slide_path)
    assert info.dimensions == (1024, 1024)
    assert info.level_count == 3 and info.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    assert info.mpp == pytest.approx((0.5, 0.5), rel=1e-3)
    assert info.vendor == ("aperio" if slide_format == "svs" else "generic-tiff")


def test_synthetic_paip_layout(paip_tree: Path) -> None:
    marker = json.loads((paip_tree / "SYNTHETIC_DATA.json").read_text())
    assert marker["synthetic"] is True
    slides = scan_paip(paip_tree)
    assert len(slides) == 4 and set(slides["phase"]) == {"Training_phase_1", "Training_phase_2"}
    for _, row in slides.iterrows():
        assert Path(row["path"]).name == f"{row['slide_id']}.svs"
        assert row["slide_id"].startswith("01_01_")
        viable = tifffile.imread(row["mask"])
        whole = tifffile.imread(row["whole_mask"])
        assert viable.shape == whole.shape == (1024, 1024) and set(np.unique(viable)) <= {0, 1}
        assert (
            viable.any() and (viable <= whole).all()
        )  # viable tumour lies inside the whole tumour


@pytest.mark.parametrize("tiled", [True, False])
def test_tiled_mask_reads_regions_and_counts_blocks_like_the_dense_array(
    tmp_path: Path, tiled: bool
) -> None:
    rng = np.random.default_rng(1)
    dense = (rng.random((700, 530)) < 0.3).astype(np.uint8)
    path = tmp_path / "mask.tif"
    if tiled:
        tifffile.imwrite(path, dense, tile=(128, 128), compression="zlib")
    else:
        tifffile.imwrite(path, dense, rowsperstrip=50, compression="zlib")
    with TiledMask(path) as mask:
        assert mask.shape == (700, 530)
        np.testing.assert_array_equal(mask.read(100, 37, 300, 260), dense[100:400, 37:297])
        outside = mask.read(650, 500, 100, 100)
        np.testing.assert_array_equal(outside[:50, :30], dense[650:, 500:])
        assert outside[50:].sum() == 0 and outside[:, 30:].sum() == 0
        counts = mask.block_counts(64)
    padded = np.zeros((704, 576), np.int64)
    padded[:700, :530] = dense
    expected = padded.reshape(11, 64, 9, 64).sum(axis=(1, 3))
    np.testing.assert_array_equal(counts, expected)


# ---- the per-slide index cache ----------------------------------------------------------------------------
def test_patch_index_is_cached_by_everything_that_made_it(tmp_path: Path, caplog) -> None:
    slide, mask = known_slide(tmp_path / "slides")
    cache = tmp_path / "cache"
    spec = PatchSpec(patch_size=128, stride=128, n_per_slide=10, tissue_downsample=16.0)
    first = load_or_sample_patches(slide, mask, tmp_path, cache, spec)
    again = load_or_sample_patches(slide, mask, tmp_path, cache, spec)
    pd.testing.assert_frame_equal(first, again)
    assert len(list(cache.glob("*/patches.csv"))) == 1
    load_or_sample_patches(slide, mask, tmp_path, cache, PatchSpec(**{**spec.__dict__, "seed": 1}))
    load_or_sample_patches(slide, None, tmp_path, cache, spec)
    assert (
        len(list(cache.glob("*/patches.csv"))) == 3
    )  # another seed, no mask: other indexes, never mixed
    # a record that disagrees with its key, or a damaged index, is resampled (logged), never mixed
    for damage in ("record", "truncate"):
        (store,) = [
            p.parent for p in cache.glob("*/patches.csv") if _index_of(p.parent, spec, mask)
        ]
        if damage == "record":
            info = json.loads((store / "cache.json").read_text())
            info["made_by"]["spec"]["n_per_slide"] = 999
            (store / "cache.json").write_text(json.dumps(info))
        else:
            (store / "patches.csv").write_text("x,y\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rebuilt = load_or_sample_patches(slide, mask, tmp_path, cache, spec)
        pd.testing.assert_frame_equal(rebuilt, first)
        assert any(
            f"{store}" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records
        )


def _index_of(store: Path, spec: PatchSpec, mask: Path) -> bool:
    made_by = json.loads((store / "cache.json").read_text())["made_by"]
    return made_by["mask"] is not None and made_by["spec"]["seed"] == spec.seed


# ---- one handle per worker -----------------------------------------------------------------------------
class CountingOpener:
    """Opens slides with openslide and appends ``<pid> <path>`` to a log for every open."""

    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self, path: str):
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()} {path}\n")
        return open_slide(path)


def test_one_openslide_handle_per_slide_per_worker(tmp_path: Path, paip_tree: Path) -> None:
    slides = scan_paip(paip_tree)["path"].tolist()[:2]
    xs = np.tile(np.arange(0, 512, 64), 4)
    paths = [slides[i % 2] for i in range(len(xs))]
    log = tmp_path / "opens.log"
    source = SlidePatchSource(
        paths, xs, np.full(len(xs), 256), 0, 64, SlideHandles(opener=CountingOpener(log))
    )
    assert source[0].shape == (64, 64, 3)  # the parent opens one slide before the workers fork
    assert len(source.handles) == 1

    def collate(batch):
        return np.stack(batch)

    loader = DataLoader(source, batch_size=4, num_workers=2, collate_fn=collate)
    for _ in range(2):  # two epochs: non-persistent workers are new processes each epoch
        patches = np.concatenate(list(loader))
    assert patches.shape == (len(xs), 64, 64, 3)
    np.testing.assert_array_equal(patches[0], source[0])
    opens = [line.split(" ", 1) for line in log.read_text().splitlines()]
    parent = str(os.getpid())
    by_worker: dict[str, list[str]] = {}
    for pid, path in opens:
        by_worker.setdefault(pid, []).append(path)
    assert by_worker.pop(parent) == [slides[0]]  # the parent's handle is never reused by a worker
    assert len(by_worker) == 4  # 2 workers x 2 epochs
    for pid, opened in by_worker.items():
        assert sorted(opened) == sorted(set(opened)), f"worker {pid} opened a slide twice: {opened}"
        assert set(opened) == set(slides)  # each worker read (and opened) both slides, once


# ---- the PAIP data module ------------------------------------------------------------------------------
def _paip_module(root: Path, tmp_path: Path, **kwargs) -> PaipDataModule:
    return PaipDataModule(
        root=str(root),
        sampling=SMALL_PATCHES,
        fold=1,
        split={"scheme": "holdout", "test_fraction": 0.5, "val_fraction": 0.0},
        class_names=["normal", "tumour"],
        num_classes=2,
        cache_dir=str(tmp_path / "cache"),
        split_dir=str(tmp_path / "splits"),
        num_workers=0,
        pairing=None,
        **kwargs,
    )


def test_paip_module_splits_slides_and_reads_patches(tmp_path: Path, paip_tree: Path) -> None:
    dm = _paip_module(paip_tree, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    table = dm.table
    assert set(table["label"]) == {0, 1}
    assert table.groupby("patient").size().max() <= SMALL_PATCHES["n_per_slide"]
    train_slides = set(table["patient"].iloc[dm._subset_rows["train"]])
    test_slides = set(table["patient"].iloc[dm._subset_rows["test"]])
    assert len(train_slides) == len(test_slides) == 2 and not train_slides & test_slides
    sample = dm.datasets["test"][0]
    assert tuple(sample["image"].shape) == (64, 64, 3) or tuple(sample["image"].shape) == (
        3,
        64,
        64,
    )
    # a patch is read at its indexed coordinates
    row = table.iloc[int(sample["index"])]
    expected = open_slide(row["path"]).read_region((int(row["x"]), int(row["y"])), 0, (64, 64))
    np.testing.assert_array_equal(dm.images[int(sample["index"])], np.asarray(expected)[..., :3])


def test_corrupt_slide_is_named_or_skipped(tmp_path: Path, paip_tree: Path) -> None:
    root = tmp_path / "paip"
    shutil.copytree(paip_tree, root)
    broken = Path(scan_paip(root)["path"].iloc[1])
    broken.write_bytes(b"this is not a slide" * 100)
    with pytest.raises(CorruptImageError, match=broken.name) as err:
        _paip_module(root, tmp_path).prepare_data()
    assert "dataset.on_corrupt=skip" in str(err.value)
    dm = _paip_module(root, tmp_path, on_corrupt="skip")
    dm.prepare_data()
    dm.setup("fit")
    assert [b.path for b in dm.skipped] == [str(broken)]
    assert str(broken) not in set(dm.table["path"]) and dm.table["patient"].nunique() == 3
    assert dm.describe()["skipped_images"] == [str(broken)]


def test_missing_mask_and_empty_root_are_layout_errors(tmp_path: Path, paip_tree: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no PAIP 2019 slides"):
        scan_paip(tmp_path)
    root = tmp_path / "paip"
    shutil.copytree(paip_tree, root)
    mask = Path(scan_paip(root)["mask"].iloc[0])
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match=mask.name):
        scan_paip(root)


def test_smse_paip_end_to_end_on_synthetic_slides(make_cfg) -> None:
    cfg = make_cfg(
        [
            "experiment=smse_paip",
            "dataset=paip2019_synthetic",
            "dataset.synthetic.n_slides=5",
            "dataset.synthetic.height=1024",
            "dataset.synthetic.width=1024",
            "dataset.sampling.patch_size=96",
            "dataset.sampling.stride=48",
            "dataset.sampling.n_per_slide=24",
            "dataset.sampling.tissue_downsample=16",
            "model.net.input_size=[96,96]",
            "debug=smoke",
            "callbacks.rich_progress_bar=null",
            "callbacks.model_summary=null",
        ]
    )
    run_pipeline(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test/acc", "test/f1_normal", "test/f1_tumour", "test/auroc", "test/rr"} <= set(metrics)
    info = json.loads((out / "run_info.json").read_text())
    assert info["synthetic_data"] is True and info["data"]["pairing"] == "triplet"
    assert info["data"]["n_slides"] == 5
    assert (out / "05_tsne" / "plots" / "tsne.png").stat().st_size > 0
