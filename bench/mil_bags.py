"""Attention MIL on a Colon-sized set: does the bag loader keep the train step busy, and what do mining
and bag generation cost?

    python bench/mil_bags.py [--bags 100] [--mean-size 224] [--steps 10] [--e2e-bags 40] [--e2e-epochs 2]

Builds a Colon-sized bag set in memory (100 bags, log-normal sizes around 224 instances: ~22k 27×27 RGB
instances, like CRCHistoPhenotypes' 22,444 nuclei; random pixels, random 960-d features) and times

1. the training bag loader (instance gather from the flat array, flips/rotations, padded collate) in
   bags/s, against the train step (forward, backward, Adam) of attention MIL with Ilse's CNN on pixels
   and with an identity encoder on feature bags, in bags/s; ratio loader/step > 1: the loader outpaces
   the model;
2. Eq. 3 mining over all bags (every negative bag a false positive: the worst case) and SB / MB / FMB
   bag generation (FMB: K-means, c = 5, of the hard negatives' features), in seconds, against one
   training epoch of feature bags;
3. end-to-end training of Ilse's CNN (softsign attention, λ = 2) on pixel bags through our stack
   (:class:`~histo_lightning.methods.li_mil.module.MILModule` with its loss, training accuracy and logging on a
   Lightning ``Trainer``, the bag loader with augmentation) against a bare PyTorch loop of the same
   network (same initial weights) on the same loader: Adam, the same clamped BCE, ``backward``, ``step``.
   Bags/s of each (the best of ``--repeats`` alternating runs of ``--e2e-epochs`` epochs over
   ``--e2e-bags`` bags) and the ratio stack/bare (goal ≥ 0.9: the stack adds at most 10 %).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from histo_lightning.data.bags import FeatureBagDataset, InstanceBagDataset
from histo_lightning.methods.li_mil.bag_generation import (
    BagSizeStats,
    cluster_bags,
    kmeans_clusters,
    random_bags,
    single_bag,
)
from histo_lightning.methods.li_mil.mining import mine_hard_negatives
from histo_lightning.nets.mil import build_mil_classifier
from histo_lightning.stores.instance_store import BagArrays


def colon_sized(n_bags: int, mean_size: float, seed: int = 0) -> tuple[BagArrays, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.maximum(3, rng.lognormal(np.log(mean_size) - 0.125, 0.5, n_bags)).astype(int)
    n = int(sizes.sum())
    bags = BagArrays(
        rng.integers(0, 256, (n, 27, 27, 3), dtype=np.uint8),
        np.concatenate([[0], np.cumsum(sizes)]),
        np.arange(n_bags) % 2,
        (rng.random(n) < 0.1).astype(np.int8),
    )
    return bags, rng.random((n, 960), dtype=np.float32).astype(np.float16)


def loader_bags_per_second(dataset, passes: int = 1) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=True, collate_fn=dataset.collate_fn
    )
    start, seen = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            seen += len(batch["label"])
    return seen / (time.perf_counter() - start)


def step_bags_per_second(net: torch.nn.Module, dataset, steps: int) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-5, betas=(0.9, 0.999))
    batches = [dataset.collate_fn([dataset[i]]) for i in range(steps)]

    def step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        prob = net(batch["instances"], batch["mask"])["prob"].clamp(1e-5, 1 - 1e-5)
        y = batch["label"].float()
        (-(y * prob.log() + (1 - y) * (1 - prob).log())).mean().backward()
        optimizer.step()

    step(batches[0])
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return steps / (time.perf_counter() - start)


def end_to_end(bags: BagArrays, epochs: int, repeats: int) -> tuple[float, float]:
    """Bags/s of training Ilse's CNN through our stack and in a bare loop (see the module docstring)."""
    import copy
    import functools
    import logging

    import pytorch_lightning as pl

    from histo_lightning.losses import ClampedBagBCE
    from histo_lightning.methods.li_mil.module import MILModule

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    dataset = InstanceBagDataset.from_bags(bags, augment=True)
    torch.manual_seed(0)
    initial = build_mil_classifier(
        {"name": "ilse_cnn", "patch_size": 27}, pooling="softsign", aw_factor=2
    )

    def loader() -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset, batch_size=1, shuffle=True, collate_fn=dataset.collate_fn
        )

    def bare() -> float:
        net = copy.deepcopy(initial).train()
        loss_fn = ClampedBagBCE()
        optimizer = torch.optim.Adam(net.parameters(), lr=5e-5, betas=(0.9, 0.999))
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in loader():
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(batch["instances"], batch["mask"])["prob"], batch["label"])
                loss.backward()
                optimizer.step()
        return epochs * len(dataset) / (time.perf_counter() - start)

    def stack() -> float:
        module = MILModule(
            copy.deepcopy(initial),
            ClampedBagBCE(),
            functools.partial(torch.optim.Adam, lr=5e-5, betas=(0.9, 0.999)),
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
        )
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader())
        return epochs * len(dataset) / (time.perf_counter() - start)

    best_bare, best_stack = 0.0, 0.0
    for _ in range(repeats):
        best_bare = max(best_bare, bare())
        best_stack = max(best_stack, stack())
    return best_stack, best_bare


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=100)
    parser.add_argument("--mean-size", type=float, default=224.0)
    parser.add_argument("--steps", type=int, default=10, help="bags timed per train step kind")
    parser.add_argument(
        "--e2e-bags", type=int, default=40, help="pixel bags of the end-to-end runs"
    )
    parser.add_argument("--e2e-epochs", type=int, default=2, help="epochs per end-to-end run")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating end-to-end runs of each"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    bags, features = colon_sized(args.bags, args.mean_size)
    print(
        f"Colon-sized set: {len(bags)} bags, {bags.n_instances} instances of 27×27×3 "
        f"(sizes {bags.bag_sizes.min()}–{bags.bag_sizes.max()}); {torch.get_num_threads()} CPU threads"
    )

    pixels = InstanceBagDataset.from_bags(bags, augment=True)
    feature_bags = FeatureBagDataset.from_bags(features, bags)
    loader_pixels = loader_bags_per_second(pixels)
    loader_features = loader_bags_per_second(feature_bags)
    cnn = build_mil_classifier(
        {"name": "ilse_cnn", "patch_size": 27}, pooling="softsign", aw_factor=2
    )
    head = build_mil_classifier({"name": "identity", "dim": 960}, pooling="softsign", aw_factor=2)
    step_pixels = step_bags_per_second(cnn, pixels, args.steps)
    step_features = step_bags_per_second(head, feature_bags, args.steps)
    print("\n1. bag loader vs train step (bags/s)")
    print(f"{'':28s}{'loader':>10s}{'step':>10s}{'loader/step':>14s}")
    for name, loader, step in (
        ("pixels, Ilse CNN", loader_pixels, step_pixels),
        ("feature bags, identity", loader_features, step_features),
    ):
        print(f"{name:28s}{loader:10.1f}{step:10.1f}{loader / step:14.1f}")

    labels = bags.labels
    probs = np.full(len(labels), 0.9)  # every negative bag a false positive: the worst case
    rng = np.random.default_rng(1)
    attention = [rng.dirichlet(np.ones(n)) for n in bags.bag_sizes]
    result, t_mine = timed(
        lambda: mine_hard_negatives(labels, probs, attention, bags.all_members(), k=1.0)
    )
    hard = result.instances
    stats = BagSizeStats.from_sizes(bags.bag_sizes)
    n_new = len(result.bags)
    _, t_sb = timed(lambda: single_bag(hard))
    _, t_mb = timed(lambda: random_bags(hard, n_new, stats, np.random.default_rng(2)))
    clusters, t_kmeans = timed(lambda: kmeans_clusters(features[hard].astype(np.float64), 5))
    _, t_fmb = timed(lambda: cluster_bags(hard, clusters, n_new, stats, np.random.default_rng(3)))
    epoch = len(bags) / step_features
    print(
        f"\n2. mining + generation: {len(result.bags)} false-positive bags, {len(hard)} hard negatives "
        f"(Eq. 3, k = 1); {n_new} bags generated"
    )
    for name, seconds in (
        ("Eq. 3 mining", t_mine),
        ("SB", t_sb),
        ("MB", t_mb),
        ("FMB K-means (c = 5)", t_kmeans),
        ("FMB bags", t_fmb),
    ):
        print(f"{name:24s}{seconds:9.3f} s   {seconds / epoch:8.3f} × one feature-bag epoch")
    print(f"{'one feature-bag epoch':24s}{epoch:9.3f} s (train steps only)")

    small, _ = colon_sized(args.e2e_bags, args.mean_size, seed=4)
    stack, bare = end_to_end(small, args.e2e_epochs, args.repeats)
    print(
        f"\n3. end-to-end training, Ilse's CNN on pixel bags ({len(small)} bags, "
        f"{small.n_instances} instances, {args.e2e_epochs} epochs, best of {args.repeats})"
    )
    print(f"{'our stack (MILModule + Trainer)':34s}{stack:8.2f} bags/s")
    print(f"{'bare PyTorch loop':34s}{bare:8.2f} bags/s")
    print(f"{'ratio stack / bare':34s}{stack / bare:8.3f}   (goal >= 0.9)")


if __name__ == "__main__":
    main()
