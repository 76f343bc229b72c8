"""Attention-based hard-negative mining (Li et al. §3.0.2, Eq. 3) as a consumer of a predict stage.

The mining stage predicts every training bag of the fold with the stage-1 model; its cache holds, per
bag, ``[p, w_1 … w_n, 0 …]`` (:meth:`~histo_lightning.methods.li_mil.module.MILModule.predict_step`). When the cache
is complete, :meth:`HardNegativeMining.on_features_ready` (called by the stage, also when every row was
cached already) takes the false-positive bags (negative bags with ``p ≥ threshold``) and in each the
instances with ``w ≥ mean + k·std`` of that bag's weights (Eq. 3, :mod:`histo_lightning.methods.li_mil.mining`), and
writes into the stage folder:

* ``hard_negatives.csv``: one row per hard negative: ``instance`` (global index into the dataset's
  instances), ``bag`` (dataset bag row), ``bag_name``, ``x``, ``y``, ``weight``, ``relative_weight``
  (``w · n``), ``bag_prob``;
* ``bags.csv``: every training bag: name, label, probability, size, false positive or not, hard count;
* ``report.json`` / ``report.md``: counts of bags (training, negative, false positive) and instances
  (in false-positive bags, hard), with the mining settings; logged as ``mining/*``;
* ``gallery.png``: Fig. 3, the hard negatives (highest weight first) next to true key instances of
  positive bags (highest attention first; without instance labels, the highest-attention instances of
  positive bags), also sent to W&B/TensorBoard.

**What is mined** (``mine_on``, ``method.hnm.mine_on``): ``train`` (the paper, §3.0.2: the stage-1 model's
predictions on the very bags it trained on) or ``out_of_fold``: each training bag scored by a model that
did not train on it, the pooled predictions of the inner folds' scoring stages
``<inner_stage>_1 … <inner_stage>_<inner_folds>`` (``pipelines/mil.inner_fold``; the stage's own cache
then only gives the stage-1 model's training accuracy, reported beside the out-of-fold one). A model
that fits its training bags (0.91–0.975 accuracy on a real Colon-like set) leaves few false-positive
bags to mine on them; out-of-fold predictions show which negative bags the model family finds
misleading.

Changing ``k``, ``threshold`` or ``mine_on`` changes the stage's config, so the runner redoes mining and
every stage after it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from histo_lightning.errors import ConfigError
from histo_lightning.methods.li_mil.mining import mine_hard_negatives
from histo_lightning.methods.li_mil.plots import gallery_figure
from histo_lightning.reporting.plots import log_image, save_figure
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.utils.choices import COUNT, NUMBER, PROBABILITY, declare_choices
from histo_lightning.utils.io import atomic_path, write_json_atomic, write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

SYNTHETIC_NOTE = "\n_Synthetic data: these numbers say nothing about real performance._\n"


def bag_outputs(
    cache: FeatureCache,
) -> tuple[pd.DataFrame, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``(manifest rows, probabilities, attention per bag, member indices per bag)`` of a (complete)
    mining cache: every training bag, or the bags a limited run predicted."""
    manifest = cache.manifest
    scores = np.asarray(cache.features(), dtype=np.float64)
    sizes = manifest["n_instances"].to_numpy(dtype=np.int64)
    firsts = manifest["first_instance"].to_numpy(dtype=np.int64)
    attention = [scores[i, 1 : 1 + n] for i, n in enumerate(sizes)]
    members = [np.arange(f, f + n) for f, n in zip(firsts, sizes)]
    return manifest, scores[:, 0], attention, members


MINE_ON = ("train", "out_of_fold")


def pooled_bag_outputs(
    caches: list[FeatureCache],
) -> tuple[pd.DataFrame, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """:func:`bag_outputs` of several scoring caches (the inner folds' held-out bags), pooled and in
    dataset bag order."""
    parts = [bag_outputs(c) for c in caches]
    manifest = pd.concat([p[0] for p in parts], ignore_index=True)
    probs = np.concatenate([p[1] for p in parts])
    attention = [a for p in parts for a in p[2]]
    members = [m for p in parts for m in p[3]]
    order = np.argsort(manifest["bag"].to_numpy(), kind="stable")
    return (
        manifest.iloc[order].reset_index(drop=True),
        probs[order],
        [attention[i] for i in order],
        [members[i] for i in order],
    )


@declare_choices(k=NUMBER, threshold=PROBABILITY, mine_on=MINE_ON, inner_folds=COUNT)
class HardNegativeMining(pl.Callback):
    """Eq. 3 over the training bags (see the module docstring).

    Args:
        k: hard negatives lie at least ``k`` standard deviations above their bag's mean weight (paper: 1).
        threshold: a bag is predicted positive from this probability on (0.5).
        gallery_size: hard negatives and key instances shown in ``gallery.png`` (each).
        mine_on: ``train`` (the stage's own predictions) or ``out_of_fold`` (the pooled predictions of
            the stages ``<inner_stage>_1 … <inner_stage>_<inner_folds>``).
    """

    def __init__(
        self,
        k: float = 1.0,
        threshold: float = 0.5,
        gallery_size: int = 24,
        mine_on: str = "train",
        inner_stage: str = "inner_score",
        inner_folds: int = 3,
    ) -> None:
        super().__init__()
        if mine_on not in MINE_ON:
            raise ConfigError(f"method.hnm.mine_on={mine_on!r} is not one of {MINE_ON}")
        self.k = float(k)
        self.threshold = float(threshold)
        self.gallery_size = int(gallery_size)
        self.mine_on = mine_on
        self.inner_stage = inner_stage
        self.inner_folds = int(inner_folds)

    def scored_bags(
        self, cache: FeatureCache, ctx: Any
    ) -> tuple[pd.DataFrame, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The predictions mining reads: this stage's own (``train``) or the inner folds' pooled."""
        own = bag_outputs(cache)
        if self.mine_on == "train":
            return own
        stages = [f"{self.inner_stage}_{i}" for i in range(1, self.inner_folds + 1)]
        caches = [
            FeatureCache.reopen(ctx.result(s).path("cache"), require_complete=True) for s in stages
        ]
        pooled = pooled_bag_outputs(caches)
        if sorted(pooled[0]["bag"].tolist()) != sorted(own[0]["bag"].tolist()):
            raise ConfigError(
                f"method.hnm.mine_on=out_of_fold: the stages {stages} scored {len(pooled[0])} bags, not the "
                f"{len(own[0])} training bags of stage {ctx.name} once each"
            )
        return pooled

    def on_features_ready(self, cache: FeatureCache, ctx: Any) -> dict[str, Any]:
        if not ctx.is_global_zero:
            return {}
        datamodule = ctx.datamodule
        bags = datamodule.bags
        own_manifest, own_probs, _, _ = bag_outputs(cache)
        own_labels = own_manifest["label"].to_numpy(dtype=np.int64)
        manifest, probs, attention, members = self.scored_bags(cache, ctx)
        labels = manifest["label"].to_numpy(dtype=np.int64)
        result = mine_hard_negatives(labels, probs, attention, members, self.k, self.threshold)
        sizes = manifest["n_instances"].to_numpy()
        hard_rows = []
        for b in result.bags:
            w = attention[b]
            chosen = np.isin(members[b], result.instances[result.source_bag == b])
            for instance, weight in zip(members[b][chosen], w[chosen]):
                hard_rows.append(
                    {
                        "instance": int(instance),
                        "bag": int(manifest["bag"].iloc[b]),
                        "bag_name": manifest["patient"].iloc[b],
                        "x": int(bags.coords[instance, 0]),
                        "y": int(bags.coords[instance, 1]),
                        "weight": float(weight),
                        "relative_weight": float(weight * len(w)),
                        "bag_prob": float(probs[b]),
                    }
                )
        hard = pd.DataFrame(
            hard_rows,
            columns=[
                "instance",
                "bag",
                "bag_name",
                "x",
                "y",
                "weight",
                "relative_weight",
                "bag_prob",
            ],
        )
        fp = np.zeros(len(labels), dtype=bool)
        fp[result.bags] = True
        per_bag = pd.DataFrame(
            {
                "bag_name": manifest["patient"],
                "label": labels,
                "prob": probs,
                "n_instances": sizes,
                "false_positive": fp,
                "hard_negatives": [int((result.source_bag == b).sum()) for b in range(len(labels))],
            }
        )
        negatives = labels == 0
        report = {
            "k": self.k,
            "threshold": self.threshold,
            "mine_on": self.mine_on,
            "training_bags": len(labels),
            "negative_bags": int(negatives.sum()),
            "positive_bags": int((~negatives).sum()),
            "false_positive_bags": len(result.bags),
            "false_negative_bags": int(((labels == 1) & (probs < self.threshold)).sum()),
            "instances_in_false_positive_bags": int(sizes[fp].sum()),
            "hard_negatives": len(result.instances),
            "hard_negative_share": float(len(result.instances) / sizes[fp].sum())
            if fp.any()
            else 0.0,
            # the stage-1 model on its own training bags, and on what was mined
            "training_accuracy": float(((own_probs >= self.threshold) == (own_labels == 1)).mean()),
            "mined_accuracy": float(((probs >= self.threshold) == (labels == 1)).mean()),
            "rows_predicted": len(labels),
            "rows_total": cache.source_rows,
            "synthetic_data": bool(datamodule.is_synthetic),
        }
        with atomic_path(ctx.dir / "hard_negatives.csv") as tmp:
            hard.to_csv(tmp, index=False)
        with atomic_path(ctx.dir / "bags.csv") as tmp:
            per_bag.to_csv(tmp, index=False)
        write_json_atomic(ctx.dir / "report.json", report)
        write_text_atomic(ctx.dir / "report.md", self.markdown(report))
        gallery = self.gallery(ctx, hard, manifest, labels, attention, members, report)
        log.info(
            f"Mining (Eq. 3, k={self.k:g}): {report['false_positive_bags']} of "
            f"{report['negative_bags']} negative training bags predicted positive; "
            f"{report['hard_negatives']} hard negatives of their "
            f"{report['instances_in_false_positive_bags']} instances"
        )
        metrics = {
            k: float(report[k])
            for k in (
                "false_positive_bags",
                "hard_negatives",
                "instances_in_false_positive_bags",
                "training_accuracy",
                "mined_accuracy",
            )
        }
        return {
            "metrics": metrics,
            "outputs": {
                "hard_negatives": "hard_negatives.csv",
                "bags": "bags.csv",
                "report": "report.json",
                "gallery": gallery,
            },
        }

    @staticmethod
    def markdown(report: dict[str, Any]) -> str:
        lines = [
            f"# Hard-negative mining (Li et al. Eq. 3, k = {report['k']:g}, threshold "
            f"{report['threshold']:g}, mined on {report['mine_on']} predictions)",
            "",
            "| training bags | negative | false positive | instances in FP bags | hard negatives |",
            "|---|---|---|---|---|",
            f"| {report['training_bags']} | {report['negative_bags']} | "
            f"{report['false_positive_bags']} | {report['instances_in_false_positive_bags']} | "
            f"{report['hard_negatives']} |",
            "",
            f"Training accuracy of the stage-1 model: {report['training_accuracy']:.3f}; accuracy of "
            f"the predictions mined ({report['mine_on']}): {report['mined_accuracy']:.3f}; false "
            f"negative bags: {report['false_negative_bags']}.",
        ]
        if report["rows_predicted"] < report["rows_total"]:
            lines.append(
                f"\nOnly {report['rows_predicted']} of {report['rows_total']} training bags were "
                "predicted (trainer.limit_predict_batches)."
            )
        return "\n".join(lines) + "\n" + (SYNTHETIC_NOTE if report["synthetic_data"] else "")

    def gallery(
        self,
        ctx: Any,
        hard: pd.DataFrame,
        manifest: pd.DataFrame,
        labels: np.ndarray,
        attention: list[np.ndarray],
        members: list[np.ndarray],
        report: dict[str, Any],
    ) -> str:
        bags = ctx.datamodule.bags
        top = hard.sort_values("relative_weight", ascending=False).head(self.gallery_size)
        shape = bags.instances.shape[1:]
        hard_tiles = np.stack(
            [np.asarray(bags.instances[i]) for i in top["instance"]] or [np.zeros((0, *shape))]
        ).reshape(-1, *shape)
        hard_captions = [f"{n} {w:.1f}" for n, w in zip(top["bag_name"], top["relative_weight"])]
        candidates = []  # (relative weight, instance, bag name) of key instances of positive bags
        labelled = bool((bags.instance_labels >= 0).any())
        for b in np.flatnonzero(labels == 1):
            w, m = attention[b], members[b]
            is_key = bags.instance_labels[m] == 1 if labelled else np.ones(len(m), dtype=bool)
            for i in np.flatnonzero(is_key):
                candidates.append((float(w[i] * len(w)), int(m[i]), manifest["patient"].iloc[b]))
        candidates.sort(key=lambda c: -c[0])
        chosen = candidates[: self.gallery_size]
        key_tiles = np.stack(
            [np.asarray(bags.instances[i]) for _, i, _ in chosen] or [np.zeros((0, *shape))]
        ).reshape(-1, *shape)
        key_captions = [f"{n} {w:.1f}" for w, _, n in chosen]
        fig = gallery_figure(
            hard_tiles,
            key_tiles,
            hard_captions,
            key_captions,
            title=(
                f"{ctx.datamodule.name}: {report['hard_negatives']} hard negatives from "
                f"{report['false_positive_bags']} false-positive bags (caption: bag, w·n)"
                + (" [SYNTHETIC]" if report["synthetic_data"] else "")
            ),
            key_title="key instances of positive bags (ground truth), highest attention"
            if labelled
            else "highest-attention instances of positive bags (no instance labels)",
        )
        path = save_figure(fig, ctx.dir / "gallery.png")
        log_image(ctx.loggers, "mining/gallery", path)
        return "gallery.png"


__all__ = ["MINE_ON", "HardNegativeMining", "bag_outputs", "pooled_bag_outputs"]
