"""Synthetic stand-ins for histopathology datasets, written in the real on-disk layouts."""

from histo_lightning.data.synthetic.breakhis import (
    GENERATOR_VERSION,
    PatientSpec,
    SyntheticBreakHisConfig,
    ensure_synthetic_breakhis,
    generate_breakhis,
    render_breakhis_image,
)

__all__ = [
    "GENERATOR_VERSION",
    "PatientSpec",
    "SyntheticBreakHisConfig",
    "ensure_synthetic_breakhis",
    "generate_breakhis",
    "render_breakhis_image",
]
