"""The patient recognition rate and the classification suite, against hand-computed values and under DDP."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from histo_lightning.metrics import ClassificationMetrics, PatientRecognitionRate

# patient 0: 3 images, 2 correct; patient 1: 1 image, 0 correct; patient 2: 2 images, 2 correct
PREDS = torch.tensor([1, 1, 0, 0, 1, 0])
TARGET = torch.tensor([1, 1, 1, 1, 1, 0])
PATIENT = torch.tensor([0, 0, 0, 1, 2, 2])
GROUP = torch.tensor([40, 400, 40, 40, 400, 400])


def test_rr_is_mean_of_patient_scores() -> None:
    metric = PatientRecognitionRate()
    metric.update(PREDS, TARGET, PATIENT)
    assert metric.compute().item() == pytest.approx((2 / 3 + 0 / 1 + 2 / 2) / 3)


def test_rr_differs_from_image_accuracy() -> None:
    metric = PatientRecognitionRate()
    metric.update(PREDS, TARGET, PATIENT)
    accuracy = (PREDS == TARGET).float().mean().item()
    assert accuracy == pytest.approx(4 / 6)
    assert metric.compute().item() != pytest.approx(accuracy)


def test_rr_accepts_scores_and_accumulates_batches() -> None:
    scores = torch.nn.functional.one_hot(PREDS, 2).float()
    metric = PatientRecognitionRate()
    metric.update(scores[:3], TARGET[:3], PATIENT[:3])
    metric.update(scores[3:], TARGET[3:], PATIENT[3:])
    assert metric.compute().item() == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_rr_by_group_uses_only_that_groups_images() -> None:
    metric = PatientRecognitionRate()
    metric.update(PREDS, TARGET, PATIENT, GROUP)
    by_group = metric.compute_by_group()
    # 40x: patient 0 -> images 0, 2 (1 of 2 correct), patient 1 -> image 3 (0/1)
    assert by_group[40].item() == pytest.approx((0.5 + 0.0) / 2)
    # 400x: patient 0 -> image 1 (1/1), patient 2 -> images 4, 5 (2/2)
    assert by_group[400].item() == pytest.approx(1.0)


def test_patient_scores_table() -> None:
    metric = PatientRecognitionRate()
    metric.update(PREDS, TARGET, PATIENT)
    table = metric.patient_scores()
    assert table["patient"].tolist() == [0, 1, 2]
    assert table["n_images"].tolist() == [3, 1, 2]
    assert table["n_correct"].tolist() == [2, 0, 2]


def test_rr_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        PatientRecognitionRate().update(PREDS, TARGET[:-1], PATIENT)


def test_classification_suite_keys_and_values() -> None:
    suite = ClassificationMetrics(2, ["benign", "malignant"], groups={40: "40x", 400: "400x"})
    probs = torch.nn.functional.one_hot(PREDS, 2).float()
    suite.update(probs, TARGET, PATIENT, GROUP)
    values = {k: v.item() for k, v in suite.compute().items()}
    assert set(values) == {"acc", "auroc", "f1_benign", "f1_malignant", "rr", "rr_40x", "rr_400x"}
    assert values["acc"] == pytest.approx(4 / 6)
    # benign: tp=1 (idx5), fp=2 (idx2, idx3), fn=0 -> 2/(2+2) ; malignant: tp=3, fp=0, fn=2 -> 6/8
    assert values["f1_benign"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 0))
    assert values["f1_malignant"] == pytest.approx(6 / 8)
    assert values["rr_40x"] == pytest.approx(0.25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    # interleaved so that patients 0 and 2 have images on both ranks
    order = torch.tensor([0, 4, 2, 3, 1, 5])
    mine = order[rank::world_size]
    metric = PatientRecognitionRate()
    metric.update(PREDS[mine], TARGET[mine], PATIENT[mine], GROUP[mine])
    results[rank] = (
        metric.compute().item(),
        {k: v.item() for k, v in metric.compute_by_group().items()},
    )
    dist.destroy_process_group()


def test_rr_under_ddp_matches_single_process() -> None:
    single = PatientRecognitionRate()
    single.update(PREDS, TARGET, PATIENT, GROUP)
    expected = (
        single.compute().item(),
        {k: v.item() for k, v in single.compute_by_group().items()},
    )
    results = mp.Manager().dict()
    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True, start_method="fork"
    )
    for rank in (0, 1):
        assert results[rank][0] == pytest.approx(expected[0])
        assert results[rank][1] == pytest.approx(expected[1])
