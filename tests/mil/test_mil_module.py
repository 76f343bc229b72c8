"""The MIL LightningModule, the frozen-encoder predict module and the mining consumer (hand-worked)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score

from histo_lightning.data.bags import FeatureBagDataset
from histo_lightning.losses.mil import ClampedBagBCE
from histo_lightning.methods.li_mil.mining_callback import HardNegativeMining
from histo_lightning.methods.li_mil.module import EncoderFeatures, MILModule
from histo_lightning.nets.encoders import build_encoder
from histo_lightning.nets.mil import build_mil_classifier
from histo_lightning.stores.feature_cache import FeatureCache
from histo_lightning.stores.instance_store import BagArrays


def toy_bags(seed: int = 0, n_bags: int = 16, dim: int = 6) -> BagArrays:
    """Feature bags whose key instances have feature 0 raised: positive bags hold one or two of them."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 9, n_bags)
    labels = np.arange(n_bags) % 2
    features, instance_labels = [], []
    for size, label in zip(sizes, labels):
        x = rng.normal(size=(size, dim)).astype(np.float32)
        keys = np.zeros(size, np.int8)
        if label:
            keys[rng.choice(size, 1 + int(rng.integers(0, 2)), replace=False)] = 1
            x[keys == 1, 0] += 4.0
        features.append(x)
        instance_labels.append(keys)
    x = np.concatenate(features)
    return BagArrays(
        np.zeros((len(x), 1, 1, 1), np.uint8),
        np.concatenate([[0], np.cumsum(sizes)]),
        labels,
        np.concatenate(instance_labels),
    ), x


def module(dim: int = 6, lr: float = 0.01) -> MILModule:
    return MILModule(
        build_mil_classifier({"name": "identity", "dim": dim}, pooling="softsign", aw_factor=2.0),
        ClampedBagBCE(),
        partial(torch.optim.Adam, lr=lr),
    )


def loaders(bags: BagArrays, features: np.ndarray, batch_size: int = 2):
    dataset = FeatureBagDataset.from_bags(features, bags)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn
    )


def test_module_trains_and_checkpoints_load_without_pickle(tmp_path: Path) -> None:
    pl.seed_everything(0)
    bags, features = toy_bags()
    model = module()
    loader = loaders(bags, features)
    trainer = pl.Trainer(
        max_epochs=6,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True)
        ],
    )
    trainer.fit(model, loader, loader)
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss"]) < 0.6  # learnt the raised feature
    assert {"val/acc", "val/auroc", "val/fpr", "val/inst_auroc", "val/loss_best"} <= set(metrics)
    # the logged instance AUROC is the mean over bags of each bag's AUROC of its attention
    model.eval()
    aurocs = []
    with torch.no_grad():
        for batch in loader:
            attention = model(batch["instances"], batch["mask"])["attention"]
            for w, y, m in zip(attention, batch["instance_labels"], batch["mask"]):
                if 0 < int(y[m].sum()) < int(m.sum()):
                    aurocs.append(roc_auc_score(y[m].numpy(), w[m].numpy()))
    [validated] = trainer.validate(model, loader, verbose=False)
    assert validated["val/inst_auroc"] == pytest.approx(np.mean(aurocs), abs=1e-5)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["monitor_best"]["value"] == pytest.approx(float(metrics["val/loss_best"]))
    assert "net" not in checkpoint["hyper_parameters"]

    again = module()
    again.on_load_checkpoint(checkpoint)
    assert again.best_value == pytest.approx(float(metrics["val/loss_best"]))
    [tested] = trainer.test(model, loader, verbose=False)
    assert set(tested) >= {
        f"test/{k}" for k in ("acc", "precision", "recall", "f1", "auroc", "fpr")
    }


def test_predict_step_scores_are_probability_then_attention() -> None:
    bags, features = toy_bags(n_bags=4)
    model = module().eval()
    batch = next(iter(loaders(bags, features, batch_size=4)))
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    scores = out["scores"]
    assert scores.shape == (4, 1 + batch["mask"].shape[1])
    assert torch.allclose(scores[:, 0], out["prob"])
    assert torch.allclose(scores[:, 1:].sum(1), torch.ones(4), atol=1e-6)
    assert (scores[:, 1:][~batch["mask"]] == 0).all()


def test_encoder_features_fingerprint_and_resize() -> None:
    encoder = build_encoder("resnet18", weights="random", take="pooled", channels_last=False)
    features = EncoderFeatures(encoder, input_size=32)
    out = features.predict_step({"index": torch.arange(2), "image": torch.rand(2, 3, 27, 27)}, 0)
    assert out["features"].shape == (2, encoder.dim)
    assert features.fingerprint()["input_size"] == 32
    assert features.fingerprint() != EncoderFeatures(encoder).fingerprint()


def test_mining_consumer_against_a_hand_worked_case(tmp_path: Path) -> None:
    # three training bags: a positive bag, a negative bag predicted positive (p = 0.8), a negative bag
    # predicted negative (p = 0.3). Bag 1's weights [0.1, 0.1, 0.6, 0.2]: mean 0.25, std 0.2121;
    # mean + std = 0.4621, so only its instance 2 (global index 5) is hard (Eq. 3, k = 1). With k = 0.5
    # the threshold 0.3561 keeps it alone too; with k = -1 (mean - std = 0.0379) all four are.
    sizes = [3, 4, 2]
    labels = [1, 0, 0]
    bags = BagArrays(
        np.arange(9, dtype=np.uint8).reshape(9, 1, 1, 1).repeat(4, 1).repeat(4, 2),
        np.array([0, 3, 7, 9]),
        np.array(labels),
        np.array([1, 0, 0, 0, 0, 0, 0, 0, 0]),
        np.stack([np.arange(9) * 10, np.arange(9)], 1),
        names=["a", "b", "c"],
    )
    scores = np.zeros((3, 5), np.float32)
    scores[0] = [0.9, 0.5, 0.3, 0.2, 0]
    scores[1] = [0.8, 0.1, 0.1, 0.6, 0.2]
    scores[2] = [0.3, 0.5, 0.5, 0, 0]
    manifest = pd.DataFrame(
        {
            "index": [0, 1, 2],
            "origin": ["a", "b", "c"],
            "patient": ["a", "b", "c"],
            "label": labels,
            "bag": [0, 1, 2],
            "first_instance": [0, 3, 7],
            "n_instances": sizes,
        }
    )
    cache = FeatureCache.open(tmp_path / "cache", {"test": 1}, manifest, (5,), "float32")
    cache.write(np.arange(3), scores, "all")
    cache.finalize()

    def mine(k: float, folder: str) -> tuple[dict, pd.DataFrame]:
        out = tmp_path / folder
        out.mkdir()
        ctx = SimpleNamespace(
            dir=out,
            is_global_zero=True,
            loggers=[],
            datamodule=SimpleNamespace(bags=bags, is_synthetic=True, name="toy"),
        )
        result = HardNegativeMining(k=k, gallery_size=4).on_features_ready(cache, ctx)
        return result, pd.read_csv(out / "hard_negatives.csv")

    result, hard = mine(1.0, "k1")
    assert hard["instance"].tolist() == [5] and hard["bag_name"].tolist() == ["b"]
    assert hard["x"].tolist() == [50] and hard["weight"].tolist() == pytest.approx([0.6])
    assert result["metrics"]["false_positive_bags"] == 1.0
    assert result["metrics"]["instances_in_false_positive_bags"] == 4.0
    assert (tmp_path / "k1" / "gallery.png").is_file()
    assert mine(0.5, "k05")[1]["instance"].tolist() == [5]
    assert mine(-1.0, "kneg")[1]["instance"].tolist() == [3, 4, 5, 6]
