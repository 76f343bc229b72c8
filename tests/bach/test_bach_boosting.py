"""LightGBM per (encoder, crop, fold, seed) (§2.5): settings, seeds, text models, parallel jobs, fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histo_lightning.methods.rakhlin.gradient_boosting import (
    BoostingJob,
    BoostingSettings,
    average_views_and_seeds,
    fit_booster,
    fuse,
    load_booster,
    predict_views,
    run_jobs,
    save_booster,
    seed_parameters,
)

# small forests so the tests stay fast; the paper's 191 leaves / 70 rounds are checked in params()
FAST = BoostingSettings(num_rounds=8, num_leaves=7, n_seeds=2, extra={"min_data_in_leaf": 5})


def _descriptors(n_images: int = 24, views: int = 5, dim: int = 12, seed: int = 0):
    """Four classes whose descriptors differ in a few dimensions, with per-view noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images) % 4
    centres = rng.normal(0, 1.0, size=(4, dim))
    image = centres[labels] + rng.normal(0, 0.5, size=(n_images, dim))
    features = image[:, None, :] + rng.normal(0, 0.3, size=(n_images, views, dim))
    return features.astype(np.float32), labels


def test_params_are_the_papers() -> None:
    params = BoostingSettings().params(num_class=4, fold=3, seed=2)
    assert params["objective"] == "multiclass" and params["num_class"] == 4
    assert params["learning_rate"] == 0.1 and params["num_leaves"] == 191
    assert params["feature_fraction"] == 0.46 and params["max_depth"] == 7
    assert params["bagging_fraction"] == 0.69 and params["bagging_freq"] == 0  # bagging off
    assert params["deterministic"] is True and params["force_col_wise"] is True
    assert BoostingSettings().num_rounds == 70 and BoostingSettings().n_seeds == 5
    # the authors' scheme: feature_fraction_seed = 1 + 10 * seed + fold (their 0-based fold)
    assert params["feature_fraction_seed"] == 1 + 20 + 2 and params["bagging_seed"] == 24
    assert seed_parameters(fold=1, seed=0) == {"feature_fraction_seed": 1, "bagging_seed": 2}


def test_model_reloaded_from_its_text_file_predicts_identically(tmp_path: Path) -> None:
    features, labels = _descriptors()
    booster = fit_booster(features, labels, FAST.params(4, fold=1, seed=0), FAST.num_rounds)
    path = save_booster(booster, tmp_path / "models" / "resnet50-400_f1_s0.txt")
    text = path.read_text()
    assert text.startswith("tree") and "num_class=4" in text  # LightGBM's text format, not a pickle
    reloaded = load_booster(path)
    np.testing.assert_array_equal(
        predict_views(reloaded, features), predict_views(booster, features)
    )
    probs = predict_views(booster, features)
    assert probs.shape == (24, 5, 4) and np.allclose(probs.sum(-1), 1)
    assert (probs.mean(1).argmax(1) == labels).mean() > 0.9  # it learned the training set


def test_training_is_deterministic_and_seeds_matter() -> None:
    features, labels = _descriptors()
    settings = BoostingSettings(num_rounds=8, num_leaves=7, feature_fraction=0.3)
    first = fit_booster(features, labels, settings.params(4, 1, 0), 8).model_to_string()
    again = fit_booster(features, labels, settings.params(4, 1, 0), 8).model_to_string()
    other = fit_booster(features, labels, settings.params(4, 1, 1), 8).model_to_string()
    assert first == again and first != other


def _jobs(tmp_path: Path, features: np.ndarray, labels: np.ndarray) -> list[BoostingJob]:
    train, test = np.arange(0, 20), np.arange(20, 24)
    return [
        BoostingJob(
            model=model,
            fold=2,
            seed=seed,
            features=features * scale,
            labels=labels,
            train_index=train,
            predict_index={"test": test, "train": train[:3]},
            model_path=str(tmp_path / f"{model}_f2_s{seed}.txt"),
        )
        for model, scale in (("resnet50-400", 1.0), ("vgg16-650", 2.0))
        for seed in range(FAST.n_seeds)
    ]


def test_parallel_jobs_equal_sequential_and_write_text_models(tmp_path: Path) -> None:
    features, labels = _descriptors()
    sequential = run_jobs(_jobs(tmp_path / "a", features, labels), FAST, 4, n_jobs=1)
    parallel = run_jobs(_jobs(tmp_path / "b", features, labels), FAST, 4, n_jobs=2)
    assert len(sequential) == len(parallel) == 4
    for s, p in zip(sequential, parallel):
        assert s.keys() == {"test", "train"} and s["test"].shape == (4, 5, 4)
        np.testing.assert_array_equal(s["test"], p["test"])
    for job in _jobs(tmp_path / "b", features, labels):
        assert (
            Path(job.model_path).read_text()
            == Path(job.model_path.replace("/b/", "/a/")).read_text()
        )


def test_prediction_averages_views_and_seeds_and_fusion_is_the_mean(tmp_path: Path) -> None:
    features, labels = _descriptors()
    results = run_jobs(_jobs(tmp_path, features, labels), FAST, 4)
    per_model = {
        "resnet50-400": average_views_and_seeds([results[0]["test"], results[1]["test"]]),
        "vgg16-650": average_views_and_seeds([results[2]["test"], results[3]["test"]]),
    }
    manual = (results[0]["test"].mean(1) + results[1]["test"].mean(1)) / 2
    np.testing.assert_allclose(per_model["resnet50-400"], manual)
    fused = fuse(per_model)
    np.testing.assert_allclose(fused, (per_model["resnet50-400"] + per_model["vgg16-650"]) / 2)
    assert fused.shape == (4, 4) and np.allclose(fused.sum(1), 1)
    # the mean over models of the per-model means is the mean over every (model, seed, view)
    everything = np.stack([r["test"] for r in results])
    np.testing.assert_allclose(fused, everything.mean(axis=(0, 2)))
    with pytest.raises(ValueError, match="different shapes"):
        fuse({"a": np.zeros((4, 4)), "b": np.zeros((3, 4))})
