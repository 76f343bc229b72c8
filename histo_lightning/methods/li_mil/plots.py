"""Figures of the attention-MIL reports: attention heatmaps of test bags, and the hard-negative gallery.

* :func:`heatmap_figure`: each instance's attention drawn where it lies in its image, as a filled marker
  at the nucleus centre (``markers``, Colon), as its grid cell (``grid``, UCSB), or, for bags without an
  image (digits), as a row of the instances with their weights (``mosaic``). Colours are ``w · n`` (the
  weight relative to the uniform ``1/n``) on a log scale, so bags of different sizes read alike;
  ground-truth key instances (epithelial nuclei, tumour patches, target digits) are outlined.
* :func:`gallery_figure`: Li et al. Fig. 3: the mined hard negatives (instances of negative bags that made
  the model predict positive) next to true key instances of positive bags.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import histo_lightning.reporting.plots  # noqa: F401  (selects the Agg backend)

CMAP = "inferno"
KEY_COLOUR = "#00e5ff"


def _scale(weights: np.ndarray) -> tuple[np.ndarray, LogNorm]:
    """``w · n`` (1 = the uniform weight) and a log colour scale from 1/10 of uniform to the maximum."""
    relative = np.asarray(weights, dtype=np.float64) * len(weights)
    top = max(float(relative.max()) if len(relative) else 1.0, 1.5)
    return relative, LogNorm(vmin=0.1, vmax=top, clip=True)


def _colourbar(fig: Figure, ax: plt.Axes, norm: LogNorm) -> None:
    bar = fig.colorbar(plt.cm.ScalarMappable(cmap=CMAP, norm=norm), ax=ax, fraction=0.046, pad=0.02)
    bar.set_label("attention × bag size (1 = uniform), log scale")


def heatmap_figure(
    style: str,
    weights: np.ndarray,
    coords: np.ndarray,
    instance_labels: np.ndarray,
    patch_size: int,
    image: np.ndarray | None = None,
    instances: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """The attention of one bag (see the module docstring). ``coords`` are ``(x, y)`` centre pixels."""
    relative, norm = _scale(weights)
    key = np.asarray(instance_labels) == 1
    if style == "mosaic" or image is None:
        return _mosaic(relative, norm, key, instances, weights, title)
    height, width = image.shape[:2]
    fig_width = 7.5
    fig, ax = plt.subplots(figsize=(fig_width, fig_width * height / max(width, 1) + 0.4))
    ax.imshow(image, alpha=0.6)
    colours = plt.get_cmap(CMAP)(norm(relative))
    if style == "grid":
        half = patch_size // 2
        for (x, y), colour, is_key in zip(coords, colours, key):
            ax.add_patch(
                Rectangle(
                    (x - half - 0.5, y - half - 0.5),
                    patch_size,
                    patch_size,
                    facecolor=colour,
                    alpha=0.55,
                    edgecolor=KEY_COLOUR if is_key else "none",
                    linewidth=1.2,
                )
            )
    else:
        points_per_pixel = fig_width * 72 * 0.8 / max(width, 1)
        size = (0.3 * patch_size * points_per_pixel) ** 2  # a disc about the size of a nucleus
        order = np.argsort(relative)  # the most attended on top
        ax.scatter(
            coords[order, 0],
            coords[order, 1],
            c=relative[order],
            cmap=CMAP,
            norm=norm,
            s=size,
            edgecolors="white",
            linewidths=0.3,
        )
        if key.any():
            ax.scatter(
                coords[key, 0],
                coords[key, 1],
                s=size * 2.5,
                facecolors="none",
                edgecolors=KEY_COLOUR,
                linewidths=0.9,
                label="key instance (ground truth)",
            )
            ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    _colourbar(fig, ax, norm)
    fig.tight_layout()
    return fig


def _tile(instance: np.ndarray) -> np.ndarray:
    return instance[..., 0] if instance.shape[-1] == 1 else instance


def _mosaic(
    relative: np.ndarray,
    norm: LogNorm,
    key: np.ndarray,
    instances: np.ndarray | None,
    weights: np.ndarray,
    title: str,
    columns: int = 12,
) -> Figure:
    n = len(relative)
    rows = max(1, int(np.ceil(n / columns)))
    cols = min(n, columns) or 1
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.1 * cols + 0.8, 1.35 * rows + 0.5), squeeze=False
    )
    colours = plt.get_cmap(CMAP)(norm(relative))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        if instances is not None:
            ax.imshow(_tile(instances[i]), cmap="gray")
        ax.set_title(f"{weights[i]:.3f}", fontsize=7)
        for side in ax.spines.values():
            side.set_edgecolor(KEY_COLOUR if key[i] else colours[i])
            side.set_linewidth(3.0 if key[i] else 2.0)
    fig.suptitle(title + " (frame: attention colour; cyan: key instance)", fontsize=8)
    fig.tight_layout()
    return fig


def gallery_figure(
    hard: np.ndarray,
    key: np.ndarray,
    hard_captions: Sequence[str],
    key_captions: Sequence[str],
    title: str,
    key_title: str = "key instances of positive bags (ground truth)",
    columns: int = 8,
) -> Figure:
    """Li et al. Fig. 3: rows of hard negatives, then rows of key instances (each up to ``columns``)."""
    blocks = [
        ("hard negatives (mined, Eq. 3)", hard, hard_captions),
        (key_title, key, key_captions),
    ]
    rows_per = [max(1, int(np.ceil(len(b[1]) / columns))) for b in blocks]
    fig, axes = plt.subplots(
        sum(rows_per), columns, figsize=(1.2 * columns, 1.35 * sum(rows_per) + 0.8), squeeze=False
    )
    row = 0
    for (label, tiles, captions), n_rows in zip(blocks, rows_per):
        for r in range(n_rows):
            for c in range(columns):
                ax = axes[row + r, c]
                ax.set_axis_off()
                i = r * columns + c
                if i < len(tiles):
                    ax.imshow(_tile(tiles[i]), cmap="gray")
                    ax.set_title(captions[i], fontsize=6)
        axes[row, 0].text(
            -0.1, 1.25, label, transform=axes[row, 0].transAxes, fontsize=8, fontweight="bold"
        )
        if not len(tiles):
            axes[row, 0].text(0, 0.5, "none", transform=axes[row, 0].transAxes, fontsize=8)
        row += n_rows
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["gallery_figure", "heatmap_figure"]
