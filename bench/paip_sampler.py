"""How fast are whole-slide patches served? The PAIP sampler against a plain openslide loop, and the training
loader against the SMSE training step.

    python bench/paip_sampler.py [--patches 512] [--batches 10] [hydra overrides ...]

Composes the real config (default ``experiment=smse_paip dataset=paip2019_synthetic``; the synthetic slides
are generated on first use), builds the data module as a run does, then measures:

1. ``plain loop``: one process, one openslide handle per slide, ``read_region`` on the first ``--patches``
   indexed coordinates in index order (RGBA → RGB), nothing else: the reference.
2. ``sampler``: the same coordinates through :class:`~histo_lightning.data.wsi.SlidePatchSource` in a
   DataLoader with ``dataset.num_workers`` workers (one lazily opened handle per slide per worker), raw
   uint8 patches. The ratio sampler / plain loop is the speed-up of the worker machinery (or its cost).
3. ``train loader``: the training DataLoader of the run (triplets or pairs of patches with augmentation
   and normalisation), in samples (anchors) per second, against ``train step``: the SMSE module's forward
   (all partners), Eq. 1 loss, backward and optimiser step on one held batch. Loader/step above 1 means the
   slides are not the bottleneck.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# this checkout's histo_lightning first (an installed copy would otherwise win)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Subset

import histo_lightning.utils.resolvers  # noqa: F401
from histo_lightning.data.wsi import open_slide, read_region_rgb

CONF = Path(__file__).resolve().parents[1] / "conf"


def plain_loop(source, indices: np.ndarray) -> float:
    handles: dict[str, object] = {}
    start = time.perf_counter()
    for i in indices:
        path = source.slide_paths[source.slide_of[i]]
        slide = handles.get(path) or handles.setdefault(path, open_slide(path))
        read_region_rgb(slide, source.xs[i], source.ys[i], source.level, source.size, source.size)
    elapsed = time.perf_counter() - start
    for slide in handles.values():
        slide.close()
    return len(indices) / elapsed


def _stack(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack(batch)


def sampler_loop(source, indices: np.ndarray, workers: int, batch_size: int) -> float:
    loader = DataLoader(
        Subset(source, indices.tolist()),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_stack,
    )
    start = time.perf_counter()
    seen = sum(len(batch) for batch in loader)  # includes starting the workers, as an epoch does
    return seen / (time.perf_counter() - start)


def loader_samples_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch["label"])
    return seen / (time.perf_counter() - start)


def step_samples_per_second(module, batch: dict, steps: int) -> float:
    module.train()
    optimizer = module.optimizer_factory(params=module.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        terms, _, _ = module._forward_batch(batch)
        terms.total.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(batch["label"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--patches", type=int, default=512, help="patches read by each of 1. and 2."
    )
    parser.add_argument("--batches", type=int, default=10, help="batches timed for 3.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.num_workers=4")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=smse_paip", "dataset=paip2019_synthetic", *args.overrides],
        )
    module = hydra.utils.instantiate(cfg.model)
    datamodule = hydra.utils.instantiate(cfg.dataset)
    datamodule.pairing = module.pairing  # what `auto` resolves to under a trainer
    datamodule.prepare_data()
    datamodule.setup("fit")
    source = datamodule.images
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(len(source), size=min(args.patches, len(source)), replace=False))
    workers = int(cfg.dataset.num_workers)
    synthetic = " SYNTHETIC" if datamodule.is_synthetic else ""
    print(
        f"{datamodule.name}{synthetic}: {len(source)} indexed patches of {source.size}px, "
        f"{len(source.slide_paths)} slides; {torch.get_num_threads()} CPU threads"
    )
    plain = plain_loop(source, indices)
    sampled = sampler_loop(source, indices, workers, int(cfg.dataset.batch_size))
    print(f"{'reader':<34}{'patches/s':>12}{'ratio':>8}")
    print(f"{'plain openslide read_region loop':<34}{plain:>12.1f}{1.0:>8.2f}")
    print(f"{f'sampler, {workers} workers':<34}{sampled:>12.1f}{sampled / plain:>8.2f}")

    loader = datamodule.train_dataloader()
    loader_rate = loader_samples_per_second(loader, args.batches)
    batch = next(iter(loader))
    step_rate = step_samples_per_second(module, batch, max(3, args.batches // 3))
    kind = datamodule.active_pairing or "single"
    print(f"{'training (' + kind + ' samples)':<34}{'samples/s':>12}{'loader/step':>12}")
    print(f"{'train loader':<34}{loader_rate:>12.1f}{loader_rate / step_rate:>12.2f}")
    print(f"{'train step':<34}{step_rate:>12.1f}")


if __name__ == "__main__":
    main()
