"""CHS-Net speed: cascade detection against the networks' pure forward throughput, and loader vs step.

    python bench/chsnet_detection.py [--hpfs 4] [--batches 10] [hydra overrides ...]

Composes the real config (default ``experiment=chsnet_demo``, synthetic TUPAC16; random weights, so
``--screen-pass`` sets what share of windows the stand-in screening network passes) and prints:

1. **Detection**: HPFs/s of the whole cascade (:class:`~histo_lightning.methods.chsnet.detector.ChsnetCascadeDetector`:
   window views, screening, refined network on the survivors, NMS) against the time the two networks
   alone need for the same windows (screening on all, refined on the survivors, as pre-built batches).
   The overhead ratio cascade time / forward time near 1 means the sliding window costs nothing beyond
   the networks. Also the fraction of windows screening prunes, and the speed-up of the cascade over
   running the refined network on every window.
2. **Training**: training-loader patches/s (index rows cut from the memmapped HPFs) against train-step
   patches/s (forward, backward, Adam) of the screening module. A ratio above 1: loading is not the
   bottleneck.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from torch import nn

import histo_lightning.utils.resolvers  # noqa: F401
from histo_lightning.methods.chsnet.detector import ChsnetCascadeDetector, window_views

CONF = Path(__file__).resolve().parents[1] / "conf"


class Passing(nn.Module):
    """Wraps a network and shifts its logits so that about ``share`` of the windows score p > 0.8."""

    def __init__(self, net: nn.Module, share: float) -> None:
        super().__init__()
        self.net, self.share = net, share
        self.offset: float | None = None

    def forward_views(self, context: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        logits = self.net.forward_views(context, centre)
        margin = logits[:, 1] - logits[:, 0]
        if self.offset is None:  # calibrated once, on the first batch
            cut = torch.quantile(margin.float(), 1 - self.share)
            self.offset = float(torch.log(torch.tensor(4.0)) - cut)  # p = 0.8 at the cut
        return torch.stack([logits[:, 0], logits[:, 1] + self.offset], dim=1)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_batches(net: nn.Module, batches: list) -> None:
    for context, centre in batches:
        net.forward_views(context, centre)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hpfs", type=int, default=4, help="HPFs timed for detection")
    parser.add_argument("--batches", type=int, default=10, help="batches timed for loader and step")
    parser.add_argument("--screen-pass", type=float, default=0.05, help="share screening passes")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.net.width=0.25")
    args = parser.parse_args()
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=chsnet_demo", *args.overrides])
    datamodule = hydra.utils.instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    screening = hydra.utils.instantiate(cfg.model.screening).inference_net().eval()
    refined = hydra.utils.instantiate(cfg.model.refined).inference_net().eval()
    det = cfg.method.detection
    gate = Passing(screening, args.screen_pass)
    detector = ChsnetCascadeDetector(
        refined, gate, det.screening_threshold, det.refined_threshold, det.stride, det.batch_size
    )
    images = [datamodule.test_dataloader().dataset[i]["image"] for i in range(args.hpfs)]
    print(
        f"device: cpu ({torch.get_num_threads()} threads); width {cfg.model.net.width}, "
        f"stride {det.stride}, {args.hpfs} HPFs of {tuple(images[0].shape[1:])}"
    )

    with torch.no_grad():
        detector.candidates(images[0])  # warm-up (and the gate's calibration)
        windows = passed = 0
        cascade_s = 0.0
        for image in images:
            start = time.perf_counter()
            found = detector.candidates(image)
            detector.select(found["points"], found["prob"], det.refined_threshold)
            cascade_s += time.perf_counter() - start
            windows += int(found["windows"])
            passed += int(found["windows"] - found["screened"])
        # the same windows as ready-made batches through the networks alone
        forward_s = refined_all_s = 0.0
        for image in images:
            views = window_views(image, det.stride)
            flat = torch.arange(len(views))
            batches = [views.batch(c) for c in flat.split(det.batch_size)]
            batches = [(a.contiguous(), b.contiguous()) for a, b in batches]
            share = max(1, round(len(flat) * passed / windows))
            survivors = [views.batch(c) for c in flat[:share].split(det.batch_size)]
            survivors = [(a.contiguous(), b.contiguous()) for a, b in survivors]
            forward_s += timed(run_batches, screening, batches)
            forward_s += timed(run_batches, refined, survivors)
            refined_all_s += timed(run_batches, refined, batches)
    n = len(images)
    print(
        f"\n{'detection':<28}{'HPFs/s':>10}\n"
        f"{'cascade (views+nets+NMS)':<28}{n / cascade_s:>10.3f}\n"
        f"{'networks alone, same windows':<28}{n / forward_s:>10.3f}\n"
        f"{'refined net on every window':<28}{n / refined_all_s:>10.3f}\n"
        f"overhead ratio cascade/forward time: {cascade_s / forward_s:.2f}\n"
        f"windows pruned by screening: {1 - passed / windows:.3f} ({windows - passed}/{windows})"
    )

    # ---- training loader vs train step ----
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    batch = next(iterator)
    seen, start = 0, time.perf_counter()
    for _ in range(args.batches):
        try:
            seen += len(next(iterator)["label"])
        except StopIteration:
            iterator = iter(loader)
    loader_rate = seen / (time.perf_counter() - start)
    module = hydra.utils.instantiate(cfg.model.screening).train()
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.loss(module.net(batch["image"]), batch["label"]).backward()
        optimizer.step()

    step()
    steps = max(3, args.batches // 3)
    step_rate = steps * len(batch["label"]) / timed(lambda: [step() for _ in range(steps)])
    print(
        f"\n{'batch':>6}{'workers':>8}{'loader patches/s':>18}{'step patches/s':>16}{'loader/step':>13}\n"
        f"{len(batch['label']):>6}{cfg.dataset.num_workers:>8}{loader_rate:>18.1f}{step_rate:>16.1f}"
        f"{loader_rate / step_rate:>13.2f}"
    )


if __name__ == "__main__":
    main()
