"""t-SNE maps of learned embeddings (SMSE Fig. 10: training set left, test set right)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def tsne_2d(embeddings: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-d t-SNE coordinates of ``(N, D)`` embeddings (van der Maaten & Hinton 2008, as in SMSE Fig. 10).

    The perplexity is capped at ``(N − 1) / 3`` so small sets work; fewer than 3 points are returned as is
    (padded to 2-d).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if len(x) < 3:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=1000
    ).fit_transform(x)


def tsne_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    class_names: Sequence[str],
    group_names: Mapping[int, str] | None = None,
    title: str = "t-SNE of embeddings",
) -> Figure:
    """One scatter panel per set: ``{name: (coords (N, 2), labels (N,), groups (N,) or None)}``.

    Colour is the class; the marker is the group (e.g. magnification) when groups are given.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    colours = plt.get_cmap("tab10")
    group_names = dict(group_names or {})
    for ax, (name, (coords, labels, groups)) in zip(axes[0], panels.items()):
        # one marker per group (e.g. magnification); a single unnamed group (a PAIP slide set) is no group
        single = groups is None or (len(np.unique(groups)) == 1 and not group_names)
        group_ids = [None] if single else sorted(np.unique(groups).tolist())
        for c, class_name in enumerate(class_names):
            for g_index, g in enumerate(group_ids):
                keep = labels == c if g is None else (labels == c) & (groups == g)
                if not keep.any():
                    continue
                label = class_name if g is None else f"{class_name} {group_names.get(g, g)}"
                ax.scatter(
                    coords[keep, 0],
                    coords[keep, 1],
                    s=12,
                    alpha=0.75,
                    color=colours(c % 10),
                    marker=_MARKERS[g_index % len(_MARKERS)],
                    label=label,
                    linewidths=0,
                )
        ax.set(title=f"{name} (n={len(labels)})", xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def tsne_stage(
    ctx: Any, embeddings: Sequence[str] = ("embed_train", "embed_test"), seed: int = 0
) -> dict:
    """SMSE Fig. 10 as a pipeline function: t-SNE maps of the embeddings the predict stages cached.

    ``embeddings`` names the predict stages (one panel each, titled by their ``subset``); their feature
    caches hold the ``embedding`` of each image (a random subset of at most ``max_samples``), and their
    manifests the labels and groups (magnifications). Writes ``plots/tsne.png`` in the stage folder (also
    sent to W&B / TensorBoard as ``tsne``).
    """
    from histo_lightning.reporting.plots import log_image, save_figure
    from histo_lightning.stores.feature_cache import FeatureCache

    panels = {}
    for stage in embeddings:
        cache = FeatureCache.reopen(ctx.result(stage).path("cache"), require_complete=True)
        manifest = cache.manifest
        features = np.asarray(cache.features(), dtype=np.float32)
        subset = ctx.runner.pipeline.stages[stage].get("subset", stage)
        groups = manifest["group"].to_numpy() if "group" in manifest else None
        panels[subset] = (tsne_2d(features, seed=seed), manifest["label"].to_numpy(), groups)
    datamodule = ctx.datamodule
    synthetic = " (synthetic data)" if getattr(datamodule, "is_synthetic", False) else ""
    fig = tsne_figure(
        panels,
        datamodule.class_names,
        getattr(datamodule, "group_names", None),
        title=f"t-SNE of embeddings{synthetic}",
    )
    path = save_figure(fig, ctx.dir / "plots" / "tsne.png")
    log_image(ctx.loggers, "tsne", path)
    return {
        "outputs": {"plot": "plots/tsne.png"},
        "points": {k: len(v[1]) for k, v in panels.items()},
    }
