"""Patient-level cross-validation folds, written once to a versioned split file and reused.

A split assigns every patient, for every fold k = 1…K, to ``train``, ``val`` or ``test``:

* ``patient_kfold``: patients are dealt into K test folds, stratified by their label where every class has
  at least K patients (``StratifiedKFold`` over patients), otherwise unstratified; every patient is in
  exactly one test fold and no patient is in two.
* ``official``: the dataset's own fold file (BreakHis ``Folds.csv``) decides train/test per fold. Such
  protocols need not partition patients (BreakHis' five folds are independent 70/30 patient splits).
* ``auto``: ``official`` when the dataset ships a fold file, else ``patient_kfold``.
* ``holdout``: one fold (``fold=1``): a random ``test_fraction`` of the patients (stratified where
  possible) is the test set, the rest trains, e.g. SMSE's PAIP 2019 protocol, "30 out of 50 [slides] are
  randomly selected for training purpose and the rest 20 are used for testing" (``test_fraction=0.4``).

In both schemes the validation patients used for checkpoint selection are carved from the fold's
training patients (``val_fraction``, stratified where possible), never from its test patients.

The table is written to ``<split_dir>/<dataset>__<scheme>_k<K>_seed<S>_val<V>_v<version>.csv`` with a
``.json`` sidecar holding a fingerprint of the patient set. Later runs load it; if the dataset's patients
changed, loading refuses (a split is never silently recomputed): bump ``split.version`` or delete the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from histo_lightning.errors import ConfigError, DatasetLayoutError
from histo_lightning.stores.keys import digest_bytes
from histo_lightning.stores.store import lock_beside
from histo_lightning.utils.io import atomic_path, write_json_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

SCHEMES = ("auto", "patient_kfold", "official", "holdout")
SUBSETS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """The ``split`` config group."""

    scheme: str = "auto"
    n_folds: int = 5
    val_fraction: float = 0.2
    seed: int = 0
    version: int = 1
    test_fraction: float = 0.4  # holdout only

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"split.scheme={self.scheme!r} is not one of {', '.join(SCHEMES)}")
        if self.n_folds < 2:
            raise ConfigError(f"split.n_folds={self.n_folds} must be at least 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"split.val_fraction={self.val_fraction} must be in [0, 1)")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"split.test_fraction={self.test_fraction} must be in (0, 1)")


def patient_labels(images: pd.DataFrame) -> pd.DataFrame:
    """One row per patient with the majority ``label`` of its images: columns ``patient, label``."""
    counts = images.groupby(["patient", "label"]).size().reset_index(name="n")
    majority = counts.sort_values(
        ["patient", "n", "label"], ascending=[True, False, True]
    ).drop_duplicates("patient")
    return majority[["patient", "label"]].sort_values("patient").reset_index(drop=True)


def fingerprint(patients: pd.DataFrame) -> str:
    """A digest of the patient set and labels a split was made for."""
    lines = "\n".join(f"{p}:{label}" for p, label in zip(patients["patient"], patients["label"]))
    return digest_bytes([lines.encode()])


def _stratifiable(labels: np.ndarray, n_splits: int) -> bool:
    _, counts = np.unique(labels, return_counts=True)
    return len(counts) > 1 and counts.min() >= n_splits


def assign_test_folds(patients: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Test fold (1…K) of each patient: stratified by label when every class has ≥ K patients."""
    if len(patients) < n_folds:
        raise ConfigError(
            f"split.n_folds={n_folds} but the dataset has only {len(patients)} patients"
        )
    labels = patients["label"].to_numpy()
    if _stratifiable(labels, n_folds):
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        log.info(
            f"Split: some class has fewer than {n_folds} patients; folds are patient-grouped, not stratified"
        )
        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.zeros(len(patients), dtype=int)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels), start=1):
        folds[test_idx] = k
    return folds


def carve_validation(train: pd.DataFrame, val_fraction: float, seed: int) -> set[str]:
    """Validation patients drawn from the training patients, stratified by label where possible."""
    if val_fraction <= 0 or len(train) < 2:
        return set()
    n_val = min(max(1, round(val_fraction * len(train))), len(train) - 1)
    labels = train["label"].to_numpy()
    stratify = labels if _stratifiable(labels, 2) and n_val >= len(np.unique(labels)) else None
    _, val = train_test_split(
        train["patient"].to_numpy(), test_size=n_val, stratify=stratify, random_state=seed
    )
    return set(val.tolist())


def _with_validation(rows: list[dict], patients: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for k in sorted(table["fold"].unique()):
        in_fold = table["fold"] == k
        train = patients[
            patients["patient"].isin(table.loc[in_fold & (table["subset"] == "train"), "patient"])
        ]
        val = carve_validation(train, spec.val_fraction, seed=spec.seed * 1000 + int(k))
        table.loc[in_fold & table["patient"].isin(val), "subset"] = "val"
    return table.sort_values(["fold", "subset", "patient"]).reset_index(drop=True)


def kfold_split(patients: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """The long split table ``fold, patient, label, subset`` of the ``patient_kfold`` scheme."""
    test_fold = assign_test_folds(patients, spec.n_folds, spec.seed)
    rows = [
        {"fold": k, "patient": p, "label": int(label), "subset": "test" if f == k else "train"}
        for k in range(1, spec.n_folds + 1)
        for p, label, f in zip(patients["patient"], patients["label"], test_fold)
    ]
    return _with_validation(rows, patients, spec)


def holdout_split(patients: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """The long split table of the ``holdout`` scheme: one fold, ``test_fraction`` of the patients test."""
    if len(patients) < 2:
        raise ConfigError(f"split.scheme=holdout needs at least 2 patients, got {len(patients)}")
    n_test = min(max(1, round(spec.test_fraction * len(patients))), len(patients) - 1)
    labels = patients["label"].to_numpy()
    stratify = labels if _stratifiable(labels, 2) and n_test >= len(np.unique(labels)) else None
    _, test = train_test_split(
        patients["patient"].to_numpy(), test_size=n_test, stratify=stratify, random_state=spec.seed
    )
    test = set(test.tolist())
    rows = [
        {"fold": 1, "patient": p, "label": int(label), "subset": "test" if p in test else "train"}
        for p, label in zip(patients["patient"], patients["label"])
    ]
    return _with_validation(rows, patients, spec)


def official_split(patients: pd.DataFrame, official: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """Split table from a dataset's own patient-wise folds: ``official`` has ``fold, patient, subset``."""
    label_of = dict(zip(patients["patient"], patients["label"]))
    per_patient = official.groupby(["fold", "patient"])["subset"].agg(lambda s: sorted(set(s)))
    mixed = per_patient[per_patient.map(len) > 1]
    if len(mixed):
        (fold, patient) = mixed.index[0]
        raise DatasetLayoutError(
            f"the official fold file puts images of patient {patient} in both train and test of fold {fold}; "
            f"expected patient-wise folds (use split=patient_kfold to ignore the file)"
        )
    rows = [
        {
            "fold": int(fold),
            "patient": patient,
            "label": int(label_of[patient]),
            "subset": subsets[0],
        }
        for (fold, patient), subsets in per_patient.items()
        if patient in label_of
    ]
    return _with_validation(rows, patients, spec)


def split_file_name(dataset: str, scheme: str, n_folds: int, spec: SplitSpec) -> str:
    test = f"_test{round(spec.test_fraction * 100)}" if scheme == "holdout" else ""
    return f"{dataset}__{scheme}{test}_k{n_folds}_seed{spec.seed}_val{round(spec.val_fraction * 100)}_v{spec.version}.csv"


def load_or_create_split(
    split_dir: str | Path,
    dataset: str,
    patients: pd.DataFrame,
    spec: SplitSpec,
    official: pd.DataFrame | None = None,
    official_source: str | None = None,
    create: bool = True,
) -> pd.DataFrame:
    """The split table for ``dataset``, read from its split file or (once) created and written.

    Args:
        patients: ``patient, label`` per patient (see :func:`patient_labels`).
        official: the dataset's own folds as ``fold, patient, subset`` rows, or ``None``.
        official_source: where ``official`` came from (named in the sidecar).
        create: write the file if it does not exist (``False`` in processes that must only read).
    """
    scheme = spec.scheme
    if scheme == "auto":
        scheme = "official" if official is not None else "patient_kfold"
    if scheme == "official" and official is None:
        raise ConfigError(
            f"split.scheme=official but dataset {dataset!r} ships no fold file at its root"
        )
    if scheme == "official":
        n_folds = int(official["fold"].nunique())
    else:
        n_folds = 1 if scheme == "holdout" else spec.n_folds
    path = Path(split_dir) / split_file_name(dataset, scheme, n_folds, spec)
    meta_path = path.with_suffix(".json")
    expected = fingerprint(patients)
    with lock_beside(path):
        if path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta["patients_fingerprint"] != expected:
                raise ConfigError(
                    f"split file {path} was written for a different patient set ({meta['n_patients']} patients, "
                    f"fingerprint {meta['patients_fingerprint']}; now {len(patients)} patients, {expected}). "
                    f"Set split.version={spec.version + 1} to make a new split, or delete the file."
                )
            return pd.read_csv(path, dtype={"patient": str})
        if not create:
            raise ConfigError(
                f"split file {path} does not exist (it is written by prepare_data on rank 0)"
            )
        if scheme == "official":
            table = official_split(patients, official, spec)
        elif scheme == "holdout":
            table = holdout_split(patients, spec)
        else:
            table = kfold_split(patients, spec)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        write_json_atomic(
            meta_path,
            {
                "dataset": dataset,
                "scheme": scheme,
                "source": official_source
                if scheme == "official"
                else f"histo_lightning.data.splits.{'holdout' if scheme == 'holdout' else 'kfold'}_split",
                "n_folds": n_folds,
                **{k: v for k, v in asdict(spec).items() if k not in ("scheme", "n_folds")},
                "n_patients": len(patients),
                "patients_fingerprint": expected,
            },
        )
        log.info(f"Split: wrote {path} ({scheme}, {n_folds} folds, {len(patients)} patients)")
    return table


def check_fold(fold: int, split: pd.DataFrame, split_name: str) -> None:
    """Raise a :class:`ConfigError` naming ``fold`` unless it is one of the split's folds 1…K."""
    folds = sorted(int(f) for f in split["fold"].unique())
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or int(fold) not in folds:
        raise ConfigError(
            f"fold={fold} is out of range: split {split_name!r} defines folds {folds[0]}…{folds[-1]} (fold is 1-based)"
        )


def subsets_for_fold(split: pd.DataFrame, fold: int) -> dict[str, set[str]]:
    """``{"train": {...}, "val": {...}, "test": {...}}`` patient ids of one fold."""
    rows = split[split["fold"] == fold]
    return {s: set(rows.loc[rows["subset"] == s, "patient"].astype(str)) for s in SUBSETS}


__all__ = [
    "SplitSpec",
    "assign_test_folds",
    "carve_validation",
    "check_fold",
    "holdout_split",
    "kfold_split",
    "load_or_create_split",
    "official_split",
    "patient_labels",
    "subsets_for_fold",
]
