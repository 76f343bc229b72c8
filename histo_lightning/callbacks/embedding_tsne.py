"""t-SNE of the learned embeddings of the training and test sets after testing (SMSE Fig. 10).

Any module whose net has ``embed()`` (PNN1/PNN2, ``TimmClassifier``) is supported: the plain
``breakhis_baseline`` gives the paper's first row of Fig. 10 (embeddings learned from image-label data), the
SMSE experiments its pair and triplet rows. Images are embedded one at a time with the evaluation
transforms (no augmentation, no partners), at most ``max_samples`` per set (a random subset, fixed seed).

Writes ``plots/tsne.png`` (also sent to W&B / TensorBoard as ``test/tsne``) and ``embeddings.npz``
(``{train,test}_{embedding,label,group,row}``: the raw embeddings, labels, groups and table rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from histo_lightning.callbacks.test_report import log_image
from histo_lightning.reporting.plots import save_figure
from histo_lightning.reporting.tsne import tsne_2d, tsne_figure
from histo_lightning.utils.io import atomic_path
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


@torch.no_grad()
def embed_loader(
    net: torch.nn.Module, loader, device: torch.device, prepare=None
) -> dict[str, np.ndarray]:
    """Embeddings, labels, groups and table rows of every sample of ``loader``.

    ``prepare`` maps a batch of images on ``device`` to what the net takes (e.g. channels-last)."""
    parts: dict[str, list[np.ndarray]] = {"embedding": [], "label": [], "group": [], "row": []}
    was_training = net.training
    net.eval()
    try:
        for batch in loader:
            images = batch["image"].to(device)
            if prepare is not None:
                images = prepare(images)
            parts["embedding"].append(net.embed(images).float().cpu().numpy())
            parts["label"].append(np.asarray(batch["label"]))
            parts["group"].append(np.asarray(batch["group"]))
            parts["row"].append(np.asarray(batch["index"]))
    finally:
        net.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


class EmbeddingTSNE(pl.Callback):
    """After ``trainer.test``: t-SNE maps of train and test embeddings into ``output_dir``.

    Args:
        output_dir: the run directory.
        max_samples: at most this many images per set (t-SNE is quadratic); a debug run with an integer
            ``limit_test_batches`` embeds at most that many evaluation batches per set.
        seed: subset and t-SNE seed.
        subsets: which sets to map (default train and test, as Fig. 10).
    """

    def __init__(
        self,
        output_dir: str,
        max_samples: int = 500,
        seed: int = 0,
        subsets: tuple[str, ...] = ("train", "test"),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.max_samples = int(max_samples)
        self.seed = seed
        self.subsets = tuple(subsets)

    def _limit(self, trainer: pl.Trainer, datamodule) -> int:
        limit = trainer.limit_test_batches
        if isinstance(limit, int) and not isinstance(limit, bool):
            return min(self.max_samples, limit * datamodule.eval_batch_size)
        return self.max_samples

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = getattr(pl_module, "net", None)
        datamodule = trainer.datamodule
        if not callable(getattr(net, "embed", None)) or not hasattr(
            datamodule, "embedding_dataloader"
        ):
            log.info(
                "t-SNE skipped: the net has no embed() or the data module cannot serve embeddings"
            )
            return
        limit = self._limit(trainer, datamodule)
        sets = {}
        for subset in self.subsets:
            loader = datamodule.embedding_dataloader(subset, max_samples=limit, seed=self.seed)
            if len(loader.dataset):
                sets[subset] = embed_loader(
                    net, loader, pl_module.device, getattr(pl_module, "prepare_images", None)
                )
        if not sets:
            return
        with atomic_path(self.output_dir / "embeddings.npz") as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, **{f"{s}_{k}": v for s, parts in sets.items() for k, v in parts.items()}
            )
        panels = {
            s: (tsne_2d(p["embedding"], seed=self.seed), p["label"], p["group"])
            for s, p in sets.items()
        }
        synthetic = " (synthetic data)" if getattr(datamodule, "is_synthetic", False) else ""
        fig = tsne_figure(
            panels,
            datamodule.class_names,
            getattr(datamodule, "group_names", None),
            title=f"t-SNE of embeddings{synthetic}",
        )
        path = save_figure(fig, self.output_dir / "plots" / "tsne.png")
        log_image(trainer, "test/tsne", path)
        counts = ", ".join(f"{len(parts['label'])} {s}" for s, parts in sets.items())
        log.info(f"t-SNE of {counts} embeddings: {path}")
