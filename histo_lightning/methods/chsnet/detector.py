"""CHS-Net detection on whole HPFs (§3.1.2, §4.3): sliding windows, cascade thresholds, NMS, matching.

**Windows.** A 128×128 window slides over the (stain-normalised) HPF at ``stride``; every window is
classified from its two 64×64 views (:func:`histo_lightning.nets.chsnet.two_views`). Window centres —
the detection points, as training patches are centred on their mitosis — form a grid over the *whole*
HPF: ``ceil((H - 1) / stride) + 1`` rows of centres, spread symmetrically so the first and last lie at
most ``stride / 2`` outside the image, hence every pixel, edges and corners included, is within
``stride / 2`` (per axis) of a window centre. Windows reaching beyond the HPF see it mirrored there
(reflection without repeating the edge pixel), exactly as training patches cut near a border are
(:func:`histo_lightning.data.sampling.patching.extract_patch`, ``BORDER_REFLECT_101``): the HPF is
padded once by reflection (:func:`window_grid` gives the pads). Without the padding a mitosis within
about 50 px of an edge had no window near enough to be matched.

The views are tensor views of the padded HPF, never per-window crops: it is averaged 2×2 once (the
context views of all windows are then 64×64 windows of that half-resolution image at stride/2) and both
images are ``Tensor.unfold``-ed into ``(3, ny, nx, 64, 64)`` views; a batch gathers only its windows
from them. Window ``(i, j)`` has its centre at ``(first_y + i·stride, first_x + j·stride)`` in HPF
pixels; a centre just outside the HPF is reported at the nearest edge pixel.

**Cascade.** Every window goes through the screening network; only those with p > 0.80 go through the
refined network, and a window is a mitosis when the refined p > 0.85 too (§4.3). Without a cascade
(``screening_net=None``: the single-network ablations of Table 4) the one network sees every window and
its threshold is ``refined_threshold``.

**NMS.** "A mitotic cell may be contained by multiple patches. So, we use the NMS to remove duplicated
boxes" (§3.4.1, §4.3). Boxes of side ``nms_box`` (default 64, the §3.4.1 box that "can contain the whole
mitotic cell") centred on the window centres, scored by the final probability, go through
``torchvision.ops.nms`` with IoU threshold ``nms_iou``; the survivors' centres are the detections. The
paper's training stride (64) would leave detections up to 45 px from a mitosis, beyond the 30 px match
radius, so detection uses a finer ``stride`` (default 32: at most 23 px), an explicit setting.

**Evaluation.** Detections are matched to the ground truth within ``match_radius_px`` (30 px = 7.5 µm at
0.25 µm/px) by :func:`histo_lightning.metrics.detection.match_detections`; TP/FP/FN are summed over all
HPFs (and processes) and logged as ``test/{f1,precision,recall,tp,fp,fn}`` (a Table 3 row), with the
same counts at a grid of refined thresholds for the precision–recall curve, and the window counts
(``test/windows``, ``test/screened_out``: the fraction of windows screening pruned).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import SumMetric
from torchvision.ops import nms

from histo_lightning.metrics.detection import MATCH_RULES, DetectionF1, match_detections
from histo_lightning.nets.chsnet import PATCH_SIZE, VIEW_SIZE, to_float
from histo_lightning.utils.choices import declare_choices

CURVE_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.01), 2)


@dataclass
class WindowViews:
    """The windows of one HPF as views: ``context`` and ``centre`` are ``(3, ny, nx, 64, 64)``.

    ``first`` is the HPF ``(row, col)`` of window (0, 0)'s centre (``<= 0``), ``shape`` the HPF's
    ``(H, W)``.
    """

    context: Tensor
    centre: Tensor
    stride: int
    first: tuple[int, int] = (PATCH_SIZE // 2, PATCH_SIZE // 2)
    shape: tuple[int, int] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return self.context.shape[1], self.context.shape[2]

    def __len__(self) -> int:
        ny, nx = self.grid
        return ny * nx

    def batch(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, 64, 64)`` context and centre views of the windows with flat indices ``flat``."""
        nx = self.grid[1]
        iy, ix = flat // nx, flat % nx
        return self.context[:, iy, ix].transpose(0, 1), self.centre[:, iy, ix].transpose(0, 1)

    def centres(self, flat: Tensor) -> Tensor:
        """``(B, 2)`` HPF ``(row, col)`` of the centres of windows ``flat`` (clamped into the HPF)."""
        nx = self.grid[1]
        index = torch.stack([flat // nx, flat % nx], dim=1).float()
        centres = index * self.stride + torch.tensor(self.first, dtype=torch.float32)
        if self.shape is not None:
            limit = torch.tensor(self.shape, dtype=torch.float32) - 1
            centres = torch.minimum(centres.clamp_min(0.0), limit)
        return centres


def window_grid(size: int, stride: int) -> tuple[int, int, int, int]:
    """Window centres along one HPF axis of ``size`` pixels: ``(n, first, pad_before, pad_after)``.

    ``n`` centres at ``first + k·stride`` cover ``0 … size-1`` symmetrically (``first <= 0``, the last
    ``>= size - 1``, both at most ``stride / 2`` outside); the HPF is padded by ``pad_before`` and
    ``pad_after`` pixels so that every window lies inside the padded image, window ``k`` starting at
    ``k·stride`` there.
    """
    n = math.ceil((size - 1) / stride) + 1
    first = ((size - 1) - (n - 1) * stride) // 2
    before = PATCH_SIZE // 2 - first
    after = (n - 1) * stride + PATCH_SIZE - before - size
    return n, first, before, after


def window_views(image: Tensor, stride: int) -> WindowViews:
    """The 128×128 windows over the whole ``(3, H, W)`` HPF at ``stride`` (even), as two unfolded views."""
    if stride % 2 or stride < 2:
        raise ValueError(f"the detection stride must be even and >= 2, got {stride}")
    x = to_float(image)
    height, width = x.shape[-2:]
    if height < PATCH_SIZE or width < PATCH_SIZE:
        raise ValueError(f"an HPF of {height}x{width} is smaller than one 128x128 window")
    ny, first_y, top, bottom = window_grid(height, stride)
    nx, first_x, left, right = window_grid(width, stride)
    # mirror the HPF around its edges as training patches are (BORDER_REFLECT_101 = torch "reflect")
    x = F.pad(x[None], (left, right, top, bottom), mode="reflect")[0]
    half = F.avg_pool2d(x[None], 2)[0]
    context = half.unfold(1, VIEW_SIZE, stride // 2).unfold(2, VIEW_SIZE, stride // 2)[:, :ny, :nx]
    offset = (PATCH_SIZE - VIEW_SIZE) // 2
    centre = x[:, offset:, offset:].unfold(1, VIEW_SIZE, stride).unfold(2, VIEW_SIZE, stride)
    return WindowViews(
        context, centre[:, :ny, :nx], stride, (first_y, first_x), (int(height), int(width))
    )


def nms_points(points: Tensor, scores: Tensor, box: float, iou: float) -> Tensor:
    """Indices (by decreasing score) of the points kept by NMS on ``box``-sided boxes around them."""
    if len(points) == 0:
        return torch.zeros(0, dtype=torch.long)
    half = box / 2
    boxes = torch.cat([points.flip(1) - half, points.flip(1) + half], dim=1).float()
    return nms(boxes, scores.float(), iou)


@declare_choices(match_rule=MATCH_RULES)
class ChsnetCascadeDetector(pl.LightningModule):
    """CHS-Net's detector: mitoses on whole HPFs with the trained networks (see the module docstring).

    Args:
        final_net: the refined network (or the single network of the ablations).
        screening_net: the screening network, or None for no cascade.
        screening_threshold, refined_threshold: §4.3's 0.80 and 0.85.
        stride: window stride in pixels (even). batch_size: windows per forward pass.
        nms_box, nms_iou: NMS box side (px) and IoU threshold.
        match_radius_um: match radius in microns (7.5 µm), in pixels of the data module's HPFs
            (``radius_px``; 30 px at 0.25 µm/px) once the test starts. match_rule: ``amida13`` (TUPAC16)
            or ``one_to_one``.
    """

    def __init__(
        self,
        final_net: nn.Module,
        screening_net: nn.Module | None = None,
        screening_threshold: float = 0.8,
        refined_threshold: float = 0.85,
        stride: int = 32,
        batch_size: int = 256,
        nms_box: float = 64.0,
        nms_iou: float = 0.1,
        match_radius_um: float = 7.5,
        match_rule: str = "amida13",
    ) -> None:
        super().__init__()
        if match_rule not in MATCH_RULES:
            raise ValueError(f"match_rule={match_rule!r}: expected one of {MATCH_RULES}")
        if stride % 2 or stride < 2:
            raise ValueError(f"stride={stride} must be even and >= 2")
        self.final_net = final_net
        self.screening_net = screening_net
        self.screening_threshold = float(screening_threshold)
        self.refined_threshold = float(refined_threshold)
        self.stride = int(stride)
        self.batch_size = int(batch_size)
        self.nms_box, self.nms_iou = float(nms_box), float(nms_iou)
        self.match_radius_um, self.match_rule = float(match_radius_um), match_rule
        self.match_radius_px = self.match_radius_um / 0.25  # TUPAC16's 0.25 µm/px until setup()
        self.counts = DetectionF1(n_thresholds=len(CURVE_THRESHOLDS))
        self.windows = SumMetric()
        self.screened = SumMetric()
        self.curve: np.ndarray | None = None

    @torch.no_grad()
    def _probabilities(self, net: nn.Module, views: WindowViews, flat: Tensor) -> Tensor:
        out = []
        for chunk in flat.split(self.batch_size):
            context, centre = views.batch(chunk)
            out.append(net.forward_views(context, centre).float().softmax(dim=-1)[:, 1])
        return torch.cat(out) if out else torch.zeros(0, device=flat.device)

    @torch.no_grad()
    def candidates(self, image: Tensor) -> dict[str, Tensor]:
        """Windows that pass screening: ``points`` (row, col), final ``prob``; ``windows``, ``screened``."""
        views = window_views(image, self.stride)
        flat = torch.arange(len(views), device=image.device)
        if self.screening_net is not None:
            screen = self._probabilities(self.screening_net, views, flat)
            flat = flat[screen > self.screening_threshold]
        prob = self._probabilities(self.final_net, views, flat)
        return {
            "points": views.centres(flat),
            "prob": prob,
            "windows": torch.tensor(len(views)),
            "screened": torch.tensor(len(views) - len(flat)),
        }

    def select(self, points: Tensor, prob: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
        """Detections ``(points, scores)`` among candidates: final p > ``threshold``, then NMS."""
        keep = prob > threshold
        points, prob = points[keep], prob[keep]
        order = nms_points(points, prob, self.nms_box, self.nms_iou)
        return points[order], prob[order]

    @torch.no_grad()
    def detect(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(points (K, 2) row/col, scores (K,))`` of the mitoses found in a ``(3, H, W)`` HPF."""
        found = self.candidates(image)
        return self.select(found["points"], found["prob"], self.refined_threshold)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "radius_px"):
            self.match_radius_px = float(datamodule.radius_px(self.match_radius_um))

    def on_test_start(self) -> None:
        for net in (self.final_net, self.screening_net):
            if net is not None:
                net.eval()

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        found = self.candidates(batch["image"])
        points, scores = self.select(found["points"], found["prob"], self.refined_threshold)
        self.windows.update(found["windows"].float())
        self.screened.update(found["screened"].float())
        out = {
            "hpf": batch["hpf"],
            "points": points.cpu(),
            "scores": scores.cpu(),
            "labelled": batch["labelled"],
        }
        if batch["labelled"]:
            gt = batch["points"].cpu()
            self.counts.update(
                *match_detections(points.cpu(), gt, self.match_radius_px, self.match_rule)
            )
            curve = torch.tensor(
                [
                    match_detections(
                        self.select(found["points"], found["prob"], float(t))[0].cpu(),
                        gt,
                        self.match_radius_px,
                        self.match_rule,
                    )
                    for t in CURVE_THRESHOLDS
                ]
            )
            self.counts.update_curve(curve)
            out["gt"] = gt
        return out

    def on_test_epoch_end(self) -> None:
        windows = self.windows.compute()
        values = {
            "test/windows": windows,
            "test/screened_out": self.screened.compute() / windows.clamp_min(1),
        }
        with warnings.catch_warnings():  # the unlabelled test set never updates the counts
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            counts = self.counts.compute()  # synchronised across processes
        curve, images = counts.pop("curve"), counts.pop("images")
        self.curve = curve.cpu().numpy() if int(images) > 0 else None
        if int(images) > 0:  # labelled HPFs (the unlabelled test set has no counts)
            values.update({f"test/{k}": v for k, v in counts.items()})
        self.log_dict(values)
        for metric in (self.counts, self.windows, self.screened):
            metric.reset()


__all__ = [
    "CURVE_THRESHOLDS",
    "ChsnetCascadeDetector",
    "WindowViews",
    "nms_points",
    "window_grid",
    "window_views",
]
