"""Does the data loader keep the model busy? Training loader images/s against train-step images/s.

    python bench/loader_vs_step.py [--batches 20] [hydra overrides ...]
    make bench

Composes the real config (default ``experiment=breakhis_demo``, synthetic BreakHis), builds the training
DataLoader exactly as a run does and times it alone (workers, cache reads, augmentation, collation),
then times the model's training step alone (forward, backward, optimiser) on one batch held on the
device. A ratio loader/step above 1 means the loader outpaces the model: data loading is not the
bottleneck. Each image cache mode (memmap, none) is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

import histo_lightning.utils.resolvers  # noqa: F401

CONF = Path(__file__).resolve().parents[1] / "conf"


def loader_images_per_second(datamodule, batches: int) -> float:
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # workers started, first batch ready
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch["label"])
    return seen / (time.perf_counter() - start)


def step_images_per_second(module, batch: dict, steps: int, device: torch.device) -> float:
    module.to(device).train()
    optimizer = module.optimizer_factory(params=module.parameters())
    images, labels = batch["image"].to(device), batch["label"].to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.loss(module(images), labels).backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(labels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="batches timed for each side")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.num_workers=4")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})"
    )
    print(
        f"{'image_cache':<12}{'batch':>6}{'workers':>8}{'loader img/s':>14}{'step img/s':>12}{'loader/step':>13}"
    )
    step_rate = None
    for cache in ("memmap", "none"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    "experiment=breakhis_demo",
                    *args.overrides,
                    f"dataset.image_cache={cache}",
                ],
            )
        datamodule = hydra.utils.instantiate(cfg.dataset)
        datamodule.prepare_data()
        datamodule.setup("fit")
        loader_rate = loader_images_per_second(datamodule, args.batches)
        if step_rate is None:
            module = hydra.utils.instantiate(cfg.model)
            step_rate = step_images_per_second(
                module, next(iter(datamodule.train_dataloader())), max(3, args.batches // 4), device
            )
        print(
            f"{cache:<12}{cfg.dataset.batch_size:>6}{cfg.dataset.num_workers:>8}{loader_rate:>14.1f}{step_rate:>12.1f}{loader_rate / step_rate:>13.2f}"
        )


if __name__ == "__main__":
    main()
