"""What a stage asks of the objects a method gives it, declared (contract C4 in ``docs/CONTRACTS.md``).

A predict stage runs an **inference-only** module (no fit: frozen weights or none, e.g. Rakhlin's
:class:`~histo_lightning.methods.rakhlin.descriptors.DescriptorExtractor`, the MIL instance encoder
:class:`~histo_lightning.methods.li_mil.module.EncoderFeatures`) or the module of an earlier fit stage. Its cached
rows must be told apart from another producer's, so an inference-only module says what it is
(:class:`InferenceModule`); it may also say the shape of one sample's output (:class:`DeclaresOutputShape`)
so that the stage need not run a sample to find it. A stage callback that uses the finished features
(CHS-Net's and Li et al.'s hard-example mining) is a :class:`FeatureConsumer`.

The protocols are structural (``typing.Protocol``, ``runtime_checkable``): a class satisfies one by having
the method, without deriving from anything; the stages test them with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from histo_lightning.pipelines.runner import StageContext
    from histo_lightning.stores.feature_cache import FeatureCache


@runtime_checkable
class InferenceModule(Protocol):
    """A module whose outputs are a function of its settings alone (no fit stage it comes from)."""

    def fingerprint(self) -> dict[str, Any]:
        """What produces the outputs (encoder, weights digest, views...): the key of its cached rows."""
        ...


@runtime_checkable
class DeclaresOutputShape(Protocol):
    """A module that knows the shape of one sample's output without computing it."""

    def feature_shape(self) -> Sequence[int]:
        """The shape of ``predict_step(...)[key][i]`` (one sample)."""
        ...


@runtime_checkable
class FeatureConsumer(Protocol):
    """A predict stage's callback that reads the finished feature cache (hard-example mining)."""

    def on_features_ready(self, cache: FeatureCache, ctx: StageContext) -> dict[str, Any] | None:
        """Called once every row is in ``cache``; may return ``{"metrics": {...}, "outputs": {...}}``."""
        ...


__all__ = ["DeclaresOutputShape", "FeatureConsumer", "InferenceModule"]
