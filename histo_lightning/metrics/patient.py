"""Patient-wise recognition rate (SMSE §IV-B; Spanhol et al. 2016).

For patient i with N_i^p test images of which N_i^rec are classified correctly, the patient score is
PS_i = N_i^rec / N_i^p, and the recognition rate is RR = (1/N) Σ_i PS_i over the N test patients.
Unlike image accuracy, every patient weighs the same however many images they have.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _as_class_ids(preds: Tensor) -> Tensor:
    """Class ids from ``(N,)`` ids or ``(N, C)`` scores/probabilities."""
    return preds.argmax(dim=-1) if preds.ndim == 2 else preds.long()


class PatientRecognitionRate(Metric):
    """Patient-wise recognition rate RR, correct under DDP.

    ``update(preds, target, patient, group=None)`` takes predictions as class ids ``(N,)`` or scores
    ``(N, C)``, integer targets ``(N,)``, integer patient ids ``(N,)`` and optionally an integer group per
    image (e.g. its magnification). The states are concatenated across processes before ``compute``, so
    a patient whose images were evaluated on different GPUs is scored once over all of them.

    ``compute()`` returns RR over all images; :meth:`compute_by_group` returns RR restricted to the images
    of each group (SMSE Table VII's per-magnification RR of a magnification-independent model);
    :meth:`patient_scores` returns the per-patient table (SMSE Table VIII).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: list[Tensor]
    patient: list[Tensor]
    group: list[Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("patient", default=[], dist_reduce_fx="cat")
        self.add_state("group", default=[], dist_reduce_fx="cat")

    def update(
        self, preds: Tensor, target: Tensor, patient: Tensor, group: Tensor | None = None
    ) -> None:
        pred_ids = _as_class_ids(preds)
        if not (pred_ids.shape == target.shape == patient.shape):
            raise ValueError(
                f"preds, target and patient must have the same length, got "
                f"{tuple(pred_ids.shape)}, {tuple(target.shape)}, {tuple(patient.shape)}"
            )
        self.correct.append((pred_ids == target).to(torch.int64))
        self.patient.append(patient.to(torch.int64))
        self.group.append(
            torch.zeros_like(patient, dtype=torch.int64) if group is None else group.to(torch.int64)
        )

    @staticmethod
    def _rr(correct: Tensor, patient: Tensor) -> Tensor:
        if correct.numel() == 0:
            return torch.tensor(float("nan"), device=correct.device)
        _, inverse = torch.unique(patient, return_inverse=True)
        n_images = torch.bincount(inverse).to(torch.float64)
        n_correct = torch.bincount(inverse, weights=correct.to(torch.float64))
        return (n_correct / n_images).mean().to(torch.float32)

    def compute(self) -> Tensor:
        return self._rr(dim_zero_cat(self.correct), dim_zero_cat(self.patient))

    def compute_by_group(self) -> dict[int, Tensor]:
        """RR per group id, each over the images of that group only."""
        with self.sync_context(
            should_sync=self.sync_on_compute, distributed_available=self.distributed_available_fn
        ):
            correct, patient, group = (
                dim_zero_cat(s) for s in (self.correct, self.patient, self.group)
            )
        return {
            int(g): self._rr(correct[group == g], patient[group == g]) for g in torch.unique(group)
        }

    def patient_scores(self) -> dict[str, Tensor]:
        """Per patient: ``patient`` id, ``n_images`` (N^p), ``n_correct`` (N^rec), ``score`` (PS)."""
        with self.sync_context(
            should_sync=self.sync_on_compute, distributed_available=self.distributed_available_fn
        ):
            correct, patient = dim_zero_cat(self.correct), dim_zero_cat(self.patient)
        ids, inverse = torch.unique(patient, return_inverse=True)
        n_images = torch.bincount(inverse)
        n_correct = torch.bincount(inverse, weights=correct.to(torch.float64)).to(torch.int64)
        return {
            "patient": ids,
            "n_images": n_images,
            "n_correct": n_correct,
            "score": n_correct / n_images,
        }
