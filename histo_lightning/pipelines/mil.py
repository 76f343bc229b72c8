"""The stage functions of the attention-MIL pipelines (``conf/pipeline/mil.yaml``, ``mil_hnm.yaml``).

Li et al.'s method as stages of the runner (:mod:`histo_lightning.pipelines.runner`)::

    features  (predict)   every instance of the dataset through the frozen ``encoder`` into the SHARED
                          feature cache (once per dataset and encoder: FMB's features, feature bags)
    train     (fit)       the attention MIL model (stage 1)
    mine      (predict)   the training bags: probabilities and attention into the stage's cache; the
                          :class:`~histo_lightning.callbacks.mil_mining.HardNegativeMining` consumer applies
                          Eq. 3 to the negative bags predicted positive (§3.0.2)
    generate  (function)  :func:`generate_bags`: SB, MB or FMB (§3.0.3)
    retrain   (fit)       the training bags plus the generated negative bags (:func:`add_generated_bags`)
    test      (test)      the held-out fold, with the heatmap report

The data hooks (:func:`use_instances`, :func:`add_generated_bags`) set what a stage reads on that stage's
own view of the data module (``data:`` in the stage config; :mod:`histo_lightning.pipelines.runner`):
every stage that reads bags declares :func:`use_instances` itself, only ``retrain`` declares the
generated bags, and no stage sees what another declared.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from histo_lightning.errors import ConfigError
from histo_lightning.mil.bag_generation import (
    ALLOCATIONS,
    BagSizeStats,
    GeneratedBags,
    cluster_bags,
    kmeans_clusters,
    random_bags,
    single_bag,
)
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.utils.choices import COUNT, Accepts, OneOf, declare_choices
from histo_lightning.utils.io import atomic_path, read_json, write_json_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

METHODS = ("SB", "MB", "FMB")
GENERATED_FILE = "generated_bags.npz"
GENERATION_REPORT = "generation.json"


def _features_cache(ctx: Any, stage: str) -> FeatureCache:
    return FeatureCache.reopen(ctx.result(stage).path("cache"), require_complete=True)


def use_instances(ctx: Any, feature_bags: bool = False, features_stage: str = "features") -> None:
    """Data hook: bags of pixels (default) or, with ``feature_bags``, of the cached features of the
    ``features_stage`` (one row per instance of the dataset; the model then uses an identity encoder)."""
    if not feature_bags:
        return
    cache = _features_cache(ctx, features_stage)
    ctx.datamodule.use_features(cache.features(), source=f"feature cache {cache.folder.name}")


def resolve_n_bags(n_bags: int | str, false_positive_bags: int) -> int:
    """How many bags MB/FMB make: an integer, or ``false_positives`` (one per false-positive bag)."""
    if n_bags == "false_positives":
        return max(1, int(false_positive_bags))
    try:
        value = int(n_bags)
    except (TypeError, ValueError):
        raise ConfigError(
            f"hnm.n_bags={n_bags!r}: expected a number of bags or 'false_positives'"
        ) from None
    if value < 1:
        raise ConfigError(f"hnm.n_bags={value} must be at least 1")
    return value


def _is_n_bags(value: Any) -> bool:
    return value == "false_positives" or (
        not isinstance(value, bool) and int(value) == value and int(value) >= 1
    )


@declare_choices(
    method=OneOf(METHODS, ignore_case=True),
    allocation=ALLOCATIONS,
    n_bags=Accepts("a number of bags (at least 1) or 'false_positives'", _is_n_bags),
    clusters=COUNT,
)
def generate_bags(
    ctx: Any,
    method: str = "FMB",
    n_bags: int | str = "false_positives",
    clusters: int = 5,
    allocation: str = "proportional",
    seed: int = 0,
    mining_stage: str = "mine",
    features_stage: str = "features",
) -> dict[str, Any]:
    """The generate stage: new negative bags from the mined hard negatives (Li et al. §3.0.3).

    Args:
        method: ``SB`` (all hard negatives in one bag), ``MB`` (bags drawn at random) or ``FMB`` (bags
            drawn cluster by cluster from K-means of the hard negatives' features).
        n_bags: bags MB/FMB make (the paper does not say): an integer or ``false_positives``, one per
            false-positive bag (default: every misleading negative bag gets a hard counterpart, and the
            class balance moves little).
        clusters: c of K-means (FMB; the paper does not say; capped at the number of hard negatives).
        allocation: FMB's draw from the clusters (``proportional`` or ``multinomial``; see
            :mod:`histo_lightning.mil.bag_generation`).
        seed: seeds bag sizes, draws and K-means.
        mining_stage: the predict stage whose consumer wrote ``hard_negatives.csv``.
        features_stage: the predict stage of the instance features (FMB).

    Writes ``generated_bags.npz`` (``offsets``, ``members``: global instance indices, ``clusters``) and
    ``generation.json``; an empty set of hard negatives (no false-positive bag) generates no bag.
    """
    method = str(method).upper()
    if method not in METHODS:
        raise ConfigError(f"hnm.method={method!r} is not one of {METHODS}")
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"hnm.allocation={allocation!r} is not one of {ALLOCATIONS}")
    mining = ctx.result(mining_stage)
    hard = pd.read_csv(mining.path("hard_negatives"))
    fp_bags = int(read_json(mining.path("report"))["false_positive_bags"])
    stats = BagSizeStats.from_sizes(ctx.datamodule.train_bag_sizes())
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E6B]))
    instances = hard["instance"].to_numpy(dtype=np.int64)
    report: dict[str, Any] = {
        "method": method,
        "hard_negatives": len(instances),
        "false_positive_bags": fp_bags,
        "training_bag_sizes": stats.__dict__,
    }
    if len(instances) == 0:
        log.warning(
            f"Stage {ctx.name}: mining found no hard negative (no negative training bag was predicted "
            "positive); no bag generated, retraining sees the training bags only"
        )
        generated = GeneratedBags(method, [])
    elif method == "SB":
        generated = single_bag(instances)
    else:
        count = resolve_n_bags(n_bags, fp_bags)
        report["n_bags_rule"] = n_bags
        if method == "MB":
            generated = random_bags(instances, count, stats, rng)
        else:
            features = np.asarray(_features_cache(ctx, features_stage).features()[instances])
            labels = kmeans_clusters(features.astype(np.float64), clusters, seed=int(seed))
            ids, sizes = np.unique(labels, return_counts=True)
            report["clusters"] = {
                "c": len(ids),
                "requested": int(clusters),
                "sizes": sizes.tolist(),
                "p": np.round(sizes / sizes.sum(), 4).tolist(),
                "allocation": allocation,
            }
            generated = cluster_bags(instances, labels, count, stats, rng, allocation)
    report["generated"] = generated.describe() if generated.members else {"bags": 0}
    members = generated.members
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in members])]).astype(np.int64)
    flat = np.concatenate(members) if members else np.zeros(0, np.int64)
    clusters_flat = (
        np.concatenate(generated.clusters) if generated.clusters else np.zeros(0, np.int64)
    )
    with atomic_path(ctx.dir / GENERATED_FILE) as tmp, tmp.open("wb") as handle:
        np.savez(handle, offsets=offsets, members=flat, clusters=clusters_flat)
    write_json_atomic(ctx.dir / GENERATION_REPORT, report)
    log.info(
        f"Stage {ctx.name}: {method} made {len(members)} negative bag(s) of "
        f"{[len(m) for m in members][:10]}{'…' if len(members) > 10 else ''} instances from "
        f"{len(instances)} hard negatives"
    )
    return {
        "metrics": {"bags": len(members), "instances": int(offsets[-1])},
        "outputs": {"bags": GENERATED_FILE, "report": GENERATION_REPORT},
    }


def load_generated(path: Any) -> list[np.ndarray]:
    """The member lists of ``generated_bags.npz``."""
    with np.load(path) as data:
        offsets, members = data["offsets"], data["members"]
    return [members[a:b] for a, b in pairwise(offsets)]


def add_generated_bags(ctx: Any, stage: str = "generate") -> None:
    """Data hook of the retrain stage: the generated negative bags join this fold's training bags (in the
    stage's own view of the data module)."""
    result = ctx.result(stage)
    bags = load_generated(result.path("bags"))
    ctx.datamodule.add_generated_bags(bags, source=f"stage {stage}")


__all__ = [
    "METHODS",
    "add_generated_bags",
    "generate_bags",
    "load_generated",
    "resolve_n_bags",
    "use_instances",
]
