"""The stage functions of the attention-MIL pipelines (``conf/pipeline/mil.yaml``, ``mil_hnm.yaml``).

Li et al.'s method as stages of the runner (:mod:`histo_lightning.pipelines.runner`)::

    features  (predict)   feature bags: every instance through the frozen ``encoder`` architecture with the
                          protocol's weights into the SHARED feature cache (once per dataset and encoder)
    encoder_features      FMB with ``method.hnm.cluster_features=encoder``: the ``encoder`` as configured
    train     (fit)       the attention MIL model (stage 1)
    inner_fit_i,          ``method.hnm.mine_on=out_of_fold``: inner folds of the training bags (:func:`inner_fold`;
    inner_score_i         declared once with ``foreach``, :mod:`histo_lightning.pipelines.expand`)
    mine      (predict)   the training bags: probabilities and attention into the stage's cache; the
                          :class:`~histo_lightning.methods.li_mil.mining_callback.HardNegativeMining` consumer applies
                          Eq. 3 to the negative bags predicted positive (§3.0.2), on these predictions or
                          the pooled out-of-fold ones
    embed     (predict)   FMB with ``method.hnm.cluster_features=mil``: the stage-1 network's instance embeddings
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
from histo_lightning.methods.li_mil.bag_generation import (
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
#: what FMB's K-means clusters (``method.hnm.cluster_features``)
CLUSTER_FEATURES = ("encoder", "mil")
#: which stage's cache holds those vectors
CLUSTER_FEATURE_STAGES = {"encoder": "encoder_features", "mil": "embed"}
INNER_PARTS = ("fit", "held_out")
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


def _is_inner_folds(value: Any) -> bool:
    return not isinstance(value, bool) and int(value) == value and int(value) >= 2


@declare_choices(
    part=INNER_PARTS,
    folds=Accepts("a number of inner folds of at least 2", _is_inner_folds),
)
def inner_fold(ctx: Any, fold: int, folds: int = 3, part: str = "fit", seed: int = 0) -> None:
    """Data hook of ``method.hnm.mine_on=out_of_fold``: this stage's training bags are the fold's training
    bags without inner fold ``fold`` (``part=fit``) or that inner fold alone (``part=held_out``).

    The fold's training bags are dealt into ``folds`` inner folds stratified by bag label
    (``StratifiedKFold``, shuffled with ``seed``; the same for every stage of the run), so every training
    bag is scored once by a model that did not train on it. Validation bags stay the fold's own.
    """
    from sklearn.model_selection import StratifiedKFold

    if part not in INNER_PARTS:
        raise ConfigError(f"inner_fold part={part!r} is not one of {INNER_PARTS}")
    view = ctx.datamodule
    train = np.sort(np.asarray(view.bag_ids["train"]))
    labels = np.asarray(view.bags.labels)[train]
    folds, fold = int(folds), int(fold)
    if not 1 <= fold <= folds:
        raise ConfigError(f"inner fold {fold} is not in 1…{folds} (method.hnm.inner_folds={folds})")
    if np.bincount(labels, minlength=2).min() < folds:
        raise ConfigError(
            f"method.hnm.inner_folds={folds}: the fold's {len(train)} training bags hold only "
            f"{np.bincount(labels, minlength=2).min()} of one class; use fewer inner folds"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed) % 2**32)
    held_out = list(splitter.split(np.zeros(len(train)), labels))[fold - 1][1]
    mask = np.zeros(len(train), dtype=bool)
    mask[held_out] = True
    view.bag_ids = {**view.bag_ids, "train": train[~mask] if part == "fit" else train[mask]}


def resolve_n_bags(n_bags: int | str, false_positive_bags: int) -> int:
    """How many bags MB/FMB make: an integer, or ``false_positives`` (one per false-positive bag)."""
    if n_bags == "false_positives":
        return max(1, int(false_positive_bags))
    try:
        value = int(n_bags)
    except (TypeError, ValueError):
        raise ConfigError(
            f"method.hnm.n_bags={n_bags!r}: expected a number of bags or 'false_positives'"
        ) from None
    if value < 1:
        raise ConfigError(f"method.hnm.n_bags={value} must be at least 1")
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
    cluster_features=CLUSTER_FEATURES,
)
def generate_bags(
    ctx: Any,
    method: str = "FMB",
    n_bags: int | str = "false_positives",
    clusters: int = 5,
    allocation: str = "proportional",
    seed: int = 0,
    mining_stage: str = "mine",
    cluster_features: str = "mil",
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
            :mod:`histo_lightning.methods.li_mil.bag_generation`).
        seed: seeds bag sizes, draws and K-means.
        mining_stage: the predict stage whose consumer wrote ``hard_negatives.csv``.
        cluster_features: what FMB's K-means clusters (``method.hnm.cluster_features``). The paper: the hard
            negatives "go through a pre-trained CNN model without the last layer" (§3.0.3): ``encoder``,
            the frozen ``encoder`` group's features (stage ``encoder_features``; needs its weights, e.g.
            ImageNet ones, which cannot be downloaded offline). ``mil``: the stage-1 MIL network, which
            is pre-trained on this very task by the time mining runs, without its last layer: its
            attention network's hidden layer per instance (stage ``embed``, :meth:`MILModule.
            instance_embeddings`), needing no outside weights. Default ``mil`` (see the README's
            measurements).

    Writes ``generated_bags.npz`` (``offsets``, ``members``: global instance indices, ``clusters``) and
    ``generation.json`` (with ``capped_bags``: bags whose drawn size exceeded the pool of hard negatives,
    so they hold all of them once); an empty set of hard negatives (no false-positive bag) generates no
    bag.
    """
    method = str(method).upper()
    if method not in METHODS:
        raise ConfigError(f"method.hnm.method={method!r} is not one of {METHODS}")
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"method.hnm.allocation={allocation!r} is not one of {ALLOCATIONS}")
    if cluster_features not in CLUSTER_FEATURES:
        raise ConfigError(
            f"method.hnm.cluster_features={cluster_features!r} is not one of {CLUSTER_FEATURES}"
        )
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
        "mine_on": read_json(mining.path("report")).get("mine_on", "train"),
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
            stage = CLUSTER_FEATURE_STAGES[cluster_features]
            features = np.asarray(_features_cache(ctx, stage).features()[instances])
            labels = kmeans_clusters(features.astype(np.float64), clusters, seed=int(seed))
            ids, sizes = np.unique(labels, return_counts=True)
            report["clusters"] = {
                "features": cluster_features,
                "dim": int(features.shape[1]),
                "c": len(ids),
                "requested": int(clusters),
                "sizes": sizes.tolist(),
                "p": np.round(sizes / sizes.sum(), 4).tolist(),
                "allocation": allocation,
            }
            generated = cluster_bags(instances, labels, count, stats, rng, allocation)
    report["generated"] = (
        generated.describe() if generated.members else {"bags": 0, "capped_bags": 0}
    )
    if generated.capped:
        log.info(
            f"Stage {ctx.name}: {generated.capped} of {len(generated.members)} bag(s) drew a size above "
            f"the {len(instances)} hard negatives and hold each of them once (capped)"
        )
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
        "metrics": {
            "bags": len(members),
            "instances": int(offsets[-1]),
            "capped_bags": generated.capped,
        },
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
    "CLUSTER_FEATURES",
    "METHODS",
    "add_generated_bags",
    "generate_bags",
    "inner_fold",
    "load_generated",
    "resolve_n_bags",
    "use_instances",
]
