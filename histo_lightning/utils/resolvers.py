"""OmegaConf resolvers used by ``conf/`` (registered on import; ``run.py`` and the tests import this).

* ``${hl.root:}``: the repository root (the folder holding ``conf/`` and ``histo_lightning/``), so that
  default paths do not depend on the directory ``run.py`` is started from or on environment variables.
* ``${hl.repeat_seed:seed,repeat}``: the seed of repetition ``repeat`` (1-based) of a protocol,
  ``seed + 1000 · (repeat − 1)`` (the MIL experiments reseed training with it, as their folds).
* ``${hl.any:a,b,...}``: whether any argument is true (e.g. a stage enabled for either of two reasons).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _repeat_seed(seed: int, repeat: int) -> int:
    from histo_lightning.mil.folds import repeat_seed

    return repeat_seed(int(seed), int(repeat))


def _any(*values: object) -> bool:
    return any(
        str(v).lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v) for v in values
    )


def register() -> None:
    OmegaConf.register_new_resolver("hl.root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("hl.repeat_seed", _repeat_seed, replace=True)
    OmegaConf.register_new_resolver("hl.any", _any, replace=True)


register()
