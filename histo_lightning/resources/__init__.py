"""Data that ships inside the package: the papers' protocols published as data.

Everything an experiment reads besides the user's dataset lives here, so that a clone of the repository
(or an installed wheel) with nothing beside it runs every experiment. Each file's source is cited in the
``README.md`` beside it.

* ``splits/bach_rakhlin_folds10.json``: the BACH authors' own ten folds (Rakhlin et al. 2018), read by
  ``dataset=bach split=official`` (``dataset.official_folds``);
* ``splits/bach_patient_split.json``: a patient-aware BACH train/validation split (one fold).

:func:`resource` gives a file's path (an error naming it when the package lacks it); the config reaches the
folder as ``${paths.resources_dir}`` (the ``${hl.resources:}`` resolver).
"""

from __future__ import annotations

from pathlib import Path

#: the folder of the packaged data (a plain folder in an editable install as in an installed wheel)
RESOURCES_DIR = Path(__file__).resolve().parent


def resource(relative: str | Path) -> Path:
    """The path of the packaged file ``relative`` (e.g. ``splits/bach_rakhlin_folds10.json``)."""
    path = RESOURCES_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file in the package's data (histo_lightning/resources/); reinstall the package"
        )
    return path


__all__ = ["RESOURCES_DIR", "resource"]
