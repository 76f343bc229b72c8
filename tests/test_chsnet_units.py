"""CHS-Net building blocks against hand-worked cases: IoA, patch sampling, losses, matching, NMS, windows,
the 1:1:3 sampler, the learning-rate schedule and hard-example mining."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from histo_lightning.data.sampling.mitosis_patches import (
    PatchSampling,
    build_patch_index,
    negative_windows,
)
from histo_lightning.data.sampling.patching import extract_patch, ioa
from histo_lightning.data.sampling.samplers import RatioSampler, allocate
from histo_lightning.losses import FocalLoss, SemiFocalLoss
from histo_lightning.methods.chsnet.detector import (
    ChsnetCascadeDetector,
    nms_points,
    window_grid,
    window_views,
)
from histo_lightning.methods.chsnet.mining import HardExampleMining
from histo_lightning.methods.chsnet.module import piecewise_constant
from histo_lightning.metrics.detection import DetectionF1, match_detections
from histo_lightning.nets.chsnet import CHSNet, two_views
from histo_lightning.stores.feature_cache import FeatureCache

# ---- Eq. 8: IoA ------------------------------------------------------------------------------------


def test_ioa_hand_worked_cases() -> None:
    window = np.array([[0, 0, 128, 128]])
    boxes = np.array(
        [
            [32, 32, 96, 96],  # inside: 64*64 / 128^2 = 0.25
            [96, 96, 160, 160],  # corner: 32*32 / 16384 = 0.0625
            [112, 32, 176, 96],  # edge: 16*64 / 16384 = 0.0625
            [120, 0, 184, 64],  # 8*64 / 16384 = 0.03125
            [200, 200, 264, 264],  # disjoint
        ]
    )
    np.testing.assert_allclose(ioa(window, boxes)[0], [0.25, 0.0625, 0.0625, 0.03125, 0.0])
    # not symmetric: the window's area is the denominator
    assert ioa(boxes[:1], window)[0, 0] == 1.0


def test_negative_windows_drop_those_touching_a_mitosis_box() -> None:
    sampling = PatchSampling()
    # 256x256: window origins 0, 64, 128 in each direction = 9 windows; a mitosis at (40, 40) has the box
    # 8..72: only window (0, 0) overlaps it by >= 1/16 (64x64); (0, 64) overlaps 64x8 = 1/32 and stays.
    origins, ignored = negative_windows(256, 256, np.array([[40.0, 40.0]]), sampling)
    assert ignored == 1 and len(origins) == 8
    assert [0, 0] not in origins.tolist() and [0, 64] in origins.tolist()
    # a mitosis in the middle touches all nine windows by >= 1024 px^2: all ignored
    assert negative_windows(256, 256, np.array([[128.0, 128.0]]), sampling) == (
        pytest.approx(np.zeros((0, 2))),
        9,
    )


def test_patch_counts_of_a_small_hpf() -> None:
    sampling = PatchSampling()  # the paper's: 5 translations, 6 rotations each
    index, counts = build_patch_index(
        np.array([[256, 320], [256, 256]]), [np.array([[40.0, 40.0]]), np.zeros((0, 2))], sampling
    )
    # HPF 0: 3 x 4 windows, one ignored; (1 + 5) x (1 + 6) = 42 positives; HPF 1: 9 negatives
    assert counts == {"positives": 42, "mitoses": 1, "negatives": 11 + 9, "ignored": 1}
    positives = index[index["label"] == 1]
    assert len(positives) == 42 and positives["original"].sum() == 1
    assert (positives["angle"] != 0).sum() == 36
    shifts = np.hypot(positives["cy"] - 40, positives["cx"] - 40)
    assert shifts.max() <= 16 + 1 and len(np.unique(np.round(shifts[shifts > 0], 3))) >= 2
    negatives = index[index["label"] == 0]
    assert set(negatives["hpf"]) == {0, 1} and (negatives["angle"] == 0).all()
    # negatives are the windows' centres (origin + 64)
    assert sorted(negatives[negatives["hpf"] == 1]["cy"].unique()) == [64, 128, 192]
    # deterministic
    again, _ = build_patch_index(
        np.array([[256, 320], [256, 256]]), [np.array([[40.0, 40.0]]), np.zeros((0, 2))], sampling
    )
    assert again.equals(index)


def test_rotated_positives_have_no_blank_corners() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, size=(300, 300, 3), dtype=np.uint8)  # no zero pixel anywhere
    for angle in (17.0, 45.0, 133.0, 290.0):
        for cy, cx in ((150, 150), (70, 70), (20, 280)):  # middle, near and across the border
            patch = extract_patch(image, cy, cx, angle)
            assert patch.shape == (128, 128, 3)
            assert (patch > 0).all(), (angle, cy, cx)
    # the rotation is a rotation of the image around the patch centre: 90 degrees is exact
    plain = extract_patch(image, 150, 150, 0.0)
    turned = extract_patch(image, 150, 150, 90.0)
    assert any(np.array_equal(turned, np.rot90(plain, k)) for k in (1, 3))
    # unrotated patches are the plain slice
    assert np.array_equal(plain, image[86:214, 86:214])


# ---- Eq. 5 / Eq. 6: losses --------------------------------------------------------------------------


def _p_t(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)[torch.arange(len(targets)), targets]


def test_focal_loss_matches_eq5() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-3.0, 4.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 0, 1])
    p_t = _p_t(logits, targets)
    expected = (-5.0 * (1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert FocalLoss(alpha=5.0, gamma=2.0)(logits, targets) == pytest.approx(float(expected))
    # alpha 1, gamma 0 is cross-entropy (the paper's "SM")
    assert FocalLoss(alpha=1.0, gamma=0.0)(logits, targets) == pytest.approx(
        float(F.cross_entropy(logits, targets))
    )


def test_semi_focal_loss_matches_eq6_and_clamps() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-3.0, 4.0], [1.0, 1.0], [5.0, -5.0]])
    targets = torch.tensor([0, 1, 0, 1, 1])
    p_t = _p_t(logits, targets)
    factor = torch.minimum((1 - p_t) ** 2, torch.tensor(0.6))
    expected = (-5.0 * torch.log(p_t) * factor).mean()
    loss = SemiFocalLoss(alpha=5.0, gamma=2.0, threshold=0.6)
    assert loss(logits, targets) == pytest.approx(float(expected), rel=1e-5)
    # the clamp: a confidently wrong sample (p_t ~ 0) weighs 0.6 * alpha * -log p_t, not alpha * -log p_t
    wrong = torch.tensor([[6.0, -6.0]]), torch.tensor([1])
    p = float(_p_t(*wrong)[0])
    assert loss(*wrong) == pytest.approx(-5.0 * 0.6 * math.log(p), rel=1e-5)
    assert FocalLoss(5.0, 2.0)(*wrong) == pytest.approx(-5.0 * (1 - p) ** 2 * math.log(p), rel=1e-5)
    # where (1 - p_t)^2 < 0.6 both losses agree
    easy = torch.tensor([[3.0, 0.0]]), torch.tensor([0])
    assert loss(*easy) == pytest.approx(float(FocalLoss(5.0, 2.0)(*easy)))


# ---- matching, pooled F1, NMS -----------------------------------------------------------------------


def test_match_detections_is_a_maximum_matching() -> None:
    # greedy (closest pair first) matches P1-G1 (20 px) and then P2 cannot reach G2 (70 px): 1 TP.
    # The maximum matching pairs P1-G2 (29 px) and P2-G1 (21 px): 2 TP.
    pred = np.array([[0.0, 0.0], [0.0, 41.0]])
    gt = np.array([[0.0, 20.0], [0.0, -29.0]])
    assert match_detections(pred, gt, radius=30.0) == (2, 0, 0)
    assert match_detections(pred, gt[:1], radius=30.0) == (1, 1, 0)
    assert match_detections(np.zeros((0, 2)), gt, radius=30.0) == (0, 0, 2)
    assert match_detections(pred, np.zeros((0, 2)), radius=30.0) == (0, 2, 0)
    assert match_detections(np.array([[0.0, 30.0]]), np.array([[0.0, 0.0]])) == (1, 0, 0)
    assert match_detections(np.array([[0.0, 30.5]]), np.array([[0.0, 0.0]])) == (0, 1, 1)


def test_amida13_rule_counts_detections_in_one_circle_once() -> None:
    pred = np.array([[0.0, 5.0], [0.0, -5.0], [100.0, 100.0]])
    gt = np.array([[0.0, 0.0], [50.0, 50.0]])
    assert match_detections(pred, gt, 30.0, "one_to_one") == (1, 2, 1)
    assert match_detections(pred, gt, 30.0, "amida13") == (1, 1, 1)
    # one detection between two close mitoses finds the nearer one only (TP + FN = ground truths)
    between = np.array([[0.0, 22.0]])
    pair = np.array([[0.0, 0.0], [0.0, 40.0]])
    assert match_detections(between, pair, 30.0, "amida13") == (1, 0, 1)
    # several detections in each of two circles: two TPs, no FP; the boundary (30 px) is inside
    many = np.array([[0.0, -3.0], [0.0, 3.0], [0.0, 30.0], [0.0, 37.0], [0.0, 43.0], [0.0, 70.0]])
    assert match_detections(many, pair, 30.0, "amida13") == (2, 0, 0)
    assert match_detections(many, pair, 30.0, "one_to_one") == (2, 4, 0)
    assert match_detections(np.array([[0.0, 70.5]]), pair, 30.0, "amida13") == (0, 1, 2)


def test_detection_f1_pools_counts_over_images() -> None:
    metric = DetectionF1()
    metric.update(2, 0, 0)
    metric.update(0, 3, 1)
    out = metric.compute()
    assert (float(out["tp"]), float(out["fp"]), float(out["fn"])) == (2, 3, 1)
    assert float(out["precision"]) == pytest.approx(2 / 5)
    assert float(out["recall"]) == pytest.approx(2 / 3)
    assert float(out["f1"]) == pytest.approx(2 * 2 / (2 * 2 + 3 + 1))


def test_nms_keeps_the_best_of_overlapping_windows() -> None:
    points = torch.tensor([[100.0, 100.0], [100.0, 116.0], [300.0, 300.0], [116.0, 100.0]])
    scores = torch.tensor([0.90, 0.95, 0.88, 0.50])
    kept = nms_points(points, scores, box=64, iou=0.1)
    assert kept.tolist() == [1, 2]
    # boxes 64 px apart do not overlap: all kept
    apart = torch.tensor([[0.0, 0.0], [0.0, 64.0], [64.0, 0.0]])
    assert sorted(nms_points(apart, torch.ones(3), 64, 0.1).tolist()) == [0, 1, 2]
    assert len(nms_points(torch.zeros(0, 2), torch.zeros(0), 64, 0.1)) == 0


# ---- sliding windows --------------------------------------------------------------------------------


def test_window_views_map_back_to_hpf_coordinates() -> None:
    rng = np.random.default_rng(1)
    hpf = rng.integers(0, 256, size=(320, 384, 3), dtype=np.uint8)
    image = torch.from_numpy(hpf).permute(2, 0, 1)
    views = window_views(image, stride=32)
    # centres cover the whole HPF: 11 rows from -1 to 319, 13 columns from -1 to 383
    assert views.grid == (11, 13) and views.first == (-1, -1)
    nx = views.grid[1]
    corners = [0, nx - 1, len(views) - nx, len(views) - 1]  # the four corner windows
    flat = torch.tensor([*corners, 5, 13, 2 * nx, 3 * nx - 1, 6 * nx + 6])
    context, centre = views.batch(flat)
    for k, f in enumerate(flat.tolist()):
        # the window equals the training patch cut at its (unclamped) centre, mirrored at the borders
        row, col = -1 + 32 * (f // nx), -1 + 32 * (f % nx)
        patch = torch.from_numpy(extract_patch(hpf, row, col)).permute(2, 0, 1)[None]
        want_context, want_centre = two_views(patch)
        torch.testing.assert_close(context[k : k + 1], want_context)
        torch.testing.assert_close(centre[k : k + 1], want_centre)
    # reported centres are clamped into the HPF
    assert views.centres(torch.tensor(corners)).tolist() == [
        [0.0, 0.0],
        [0.0, 383.0],
        [319.0, 0.0],
        [319.0, 383.0],
    ]
    assert views.centres(torch.tensor([6 * nx + 6])).tolist() == [[191.0, 191.0]]
    with pytest.raises(ValueError, match="even"):
        window_views(image, stride=31)


@pytest.mark.parametrize("stride", [2, 8, 16, 32, 64])
def test_window_grid_covers_every_pixel(stride: int) -> None:
    for size in [128, 129, 200, 255, 256, 511, 512, 513, 1000, 1999, 2000, 2015, 2048]:
        n, first, before, after = window_grid(size, stride)
        last = first + (n - 1) * stride
        assert -stride // 2 <= first <= 0 and size - 1 <= last <= size - 1 + stride // 2
        centres = first + stride * np.arange(n)
        nearest = np.abs(np.arange(size)[:, None] - centres[None]).min(axis=1)
        assert nearest.max() <= stride // 2
        # the padded HPF holds every window exactly; reflection needs pads smaller than the HPF
        assert before + size + after == (n - 1) * stride + 128
        assert 0 <= before < size and 0 <= after < size


def test_mitoses_at_every_edge_and_corner_are_detected() -> None:
    class Dark(torch.nn.Module):
        """p(mitosis) > 0.85 when 5 % of the central 32 x 32 pixels are dark (the 'mitosis')."""

        def forward_views(self, context: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
            core = centre[:, :, 16:48, 16:48].float()
            dark = (core < -0.5).float().mean(dim=(1, 2, 3))
            return torch.stack([torch.zeros_like(dark), 100 * dark - 3], dim=1)

    height, width = 400, 460
    spots = [(2, 2), (2, 230), (2, 457), (200, 2), (200, 457), (397, 2), (397, 230), (397, 457)]
    hpf = torch.full((3, height, width), 220, dtype=torch.uint8)
    for row, col in spots:
        hpf[:, max(row - 6, 0) : row + 7, max(col - 6, 0) : col + 7] = 10
    detector = ChsnetCascadeDetector(Dark(), Dark(), stride=32, match_rule="amida13")
    points, _ = detector.detect(hpf)
    gt = torch.tensor(spots, dtype=torch.float32)
    assert match_detections(points, gt, 30.0, "amida13") == (len(spots), 0, 0)
    assert points[:, 0].min() >= 0 and points[:, 0].max() <= height - 1
    assert points[:, 1].min() >= 0 and points[:, 1].max() <= width - 1


def test_cascade_refines_only_what_screening_passed() -> None:
    class Marked(torch.nn.Module):
        """p(mitosis) high where the centre view is bright; counts the windows it sees."""

        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def forward_views(self, context: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
            self.seen += len(centre)
            # views arrive scaled to [-1, 1]; the logit grows with the share of bright pixels
            bright = (centre.float() > 0.5).float().mean(dim=(1, 2, 3))
            return torch.stack([torch.zeros_like(bright), 100 * bright], dim=1)

    hpf = torch.full((3, 384, 384), 10, dtype=torch.uint8)
    hpf[:, 180:200, 180:200] = 255  # one bright spot around (190, 190)
    screening, refined = Marked(), Marked()
    detector = ChsnetCascadeDetector(refined, screening, stride=32, nms_box=64, nms_iou=0.1)
    points, scores = detector.detect(hpf)
    assert screening.seen == len(window_views(hpf, 32)) == 13 * 13
    # only the 3 x 3 windows whose centre view (centre - 32 ... centre + 31) holds part of the spot
    assert refined.seen == 9
    assert len(points) >= 1 and torch.all(scores > 0.85)
    # the best window (its centre view holds the whole spot) is at (191, 191) (centres -1 + 32 k
    # cover the 384 px symmetrically); NMS removed its neighbours
    assert points.tolist() == [[191.0, 191.0]]


def test_chsnet_forward_shapes_and_views() -> None:
    for views in ("stack", "siamese"):
        net = CHSNet(width=0.0625, input_views=views).eval()
        patches = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
        logits = net(patches)
        assert logits.shape == (3, 2)
        torch.testing.assert_close(net.forward_views(*two_views(patches)), logits)
    # Table 1's widths: five stages fused, 128 + 256 + 512 + 1024 + 2048 features
    assert CHSNet(width=1.0).extractor.out_features == 3968


# ---- 1:1:3 sampler, schedule ------------------------------------------------------------------------


def test_ratio_sampler_draws_exact_proportions() -> None:
    groups = [np.arange(0, 100), np.arange(100, 120), np.arange(120, 130)]
    sampler = RatioSampler(groups, [1, 1, 3], num_samples=500, seed=3)
    seen = np.zeros(130, dtype=int)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        drawn = np.array(list(iter(sampler)))
        assert len(drawn) == len(sampler) == 500
        per_group = [np.isin(drawn, g).sum() for g in groups]
        assert per_group == [100, 100, 300]
        np.add.at(seen, drawn, 1)
    # small groups are cycled evenly: every positive 10 times, every false positive 60 times
    assert (seen[100:120] == 10).all() and (seen[120:130] == 60).all()
    # the same (seed, epoch) gives the same order in every process
    again = RatioSampler(groups, [1, 1, 3], num_samples=500, seed=3)
    assert np.array_equal(again.indices(1), sampler.indices(1))
    assert allocate(7, [1, 1, 3]).tolist() == [1, 2, 4] or allocate(7, [1, 1, 3]).sum() == 7


def test_piecewise_schedule_fractional_milestones() -> None:
    milestones, values = [2.5, 6, 9.5, 13], [0.1, 0.01, 0.001, 1e-4, 3e-5]
    assert piecewise_constant(0.0, milestones, values) == 0.1
    assert piecewise_constant(2.49, milestones, values) == 0.1
    assert piecewise_constant(2.5, milestones, values) == 0.01
    assert piecewise_constant(9.5, milestones, values) == 1e-4
    assert piecewise_constant(14.9, milestones, values) == 3e-5


# ---- hard-example mining ----------------------------------------------------------------------------


def _mining_cache(tmp_path: Path, labels: np.ndarray, probs: np.ndarray) -> FeatureCache:
    """A finished mining prediction: p(mitosis) of each patch in a feature cache, as the stage leaves it."""
    n = len(labels)
    manifest = pd.DataFrame(
        {
            "index": np.arange(n),
            "origin": ["mitoses_image_data/01/01.tif"] * n,
            "patient": ["01"] * n,
            "label": labels,
            "hpf": np.zeros(n, dtype=int),
            "cy": np.arange(n) * 2.0,
            "cx": np.arange(n) * 3.0,
            "patch_row": np.arange(n) + 1000,
        }
    )
    cache = FeatureCache.open(tmp_path / "features", {"producer": "test"}, manifest, (), "float32")
    cache.write(np.arange(n), probs.astype(np.float32), "r0-test-000000")
    cache.finalize()
    return cache


def test_mining_keeps_exactly_the_negatives_above_threshold(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.2).astype(int)
    probs = rng.random(200).astype(np.float32)
    probs[:4] = 0.25  # exactly at the threshold (0.25 is exact in float32): not a false positive
    labels[:4] = 0
    cache = _mining_cache(tmp_path, labels, probs)
    ctx = SimpleNamespace(dir=tmp_path, is_global_zero=True, datamodule=None)
    returned = HardExampleMining(threshold=0.25).on_features_ready(cache, ctx)
    hard = (labels == 0) & (probs > 0.25)
    assert not hard[:4].any()
    table = pd.read_csv(tmp_path / returned["outputs"]["false_positives"])
    assert np.array_equal(table["patch_row"], np.flatnonzero(hard) + 1000)
    np.testing.assert_allclose(table["prob"], probs[hard])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fp"] == hard.sum() == returned["metrics"]["fp"]
    assert report["tp"] == int(((labels == 1) & (probs > 0.25)).sum())
    assert report["fn"] == int(((labels == 1) & (probs <= 0.25)).sum())
    assert report["recall_neg"] == pytest.approx(1 - hard.sum() / (labels == 0).sum())
    assert "note" not in report
    assert "| FP | TP | FN |" in (tmp_path / "report.md").read_text()


def test_mining_without_false_positives_says_so(tmp_path, caplog) -> None:
    labels = np.array([0, 0, 1, 1])
    cache = _mining_cache(tmp_path, labels, np.array([0.1, 0.15, 0.9, 0.3]))
    ctx = SimpleNamespace(dir=tmp_path, is_global_zero=True, datamodule=None)
    with caplog.at_level("WARNING"):
        HardExampleMining(threshold=0.2).on_features_ready(cache, ctx)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fp"] == 0 and "no false positives" in report["note"]
    assert "no false positives" in (tmp_path / "report.md").read_text()
    assert any("no false positives" in r.getMessage() for r in caplog.records)
    assert pd.read_csv(tmp_path / "false_positives.csv").empty


def test_cv_summary_pools_detection_counts_over_folds() -> None:
    from histo_lightning.reporting.cv_summary import pooled_counts

    values = {
        "test/tp": [2.0, 0.0],
        "test/fp": [0.0, 3.0],
        "test/fn": [0.0, 1.0],
        "test/f1": [1.0, 0.0],
    }
    pooled = pooled_counts(values)
    assert (pooled["test/tp"], pooled["test/fp"], pooled["test/fn"]) == (2.0, 3.0, 1.0)
    assert pooled["test/f1"] == pytest.approx(4 / 8)  # not the mean of the fold F1s (0.5 here too)
    assert pooled["test/precision"] == pytest.approx(0.4)
    assert pooled_counts({"val/acc": [0.5]}) == {}
