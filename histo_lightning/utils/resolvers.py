"""OmegaConf resolvers used by ``conf/`` (registered on import; ``run.py`` and the tests import this).

* ``${hl.root:}``: the repository root (the folder holding ``conf/`` and ``histo_lightning/``), so that
  default paths do not depend on the directory ``run.py`` is started from or on environment variables.
* ``${hl.resources:}``: the package's own data (:mod:`histo_lightning.resources`: the papers' published
  splits), so that nothing beside the repository is read.
* ``${hl.if:<condition>,<then>,<else>}``: ``then`` when the condition is true, else ``else`` (e.g. which
  stage's network a pipeline injects, by an ablation switch).
* ``${hl.all:<a>,<b>,...}``: whether every argument is true (e.g. a stage enabled by two switches).
* ``${hl.eq:<a>,<b>}``: whether two values are equal (strings compared case-insensitively), e.g. a stage
  enabled by one value of a choice (``${hl.eq:${method.hnm.cluster_features},mil}``).
* ``${hl.repeat_seed:<seed>,<repeat>}``: the seed of repetition ``repeat`` (1-based) of a protocol,
  ``seed + 1000 · (repeat − 1)`` (the MIL experiments reseed training with it, as their folds).
* ``${hl.range:<n>}``: ``"1,2,…,n"``, a sweep over 1…n as Hydra's override grammar reads it: the
  experiments declare their paper's protocol with it in ``hydra.sweeper.params`` (``fold:
  ${hl.range:${method.protocol.n_folds}}``), so ``python run.py -m experiment=…`` runs every fold ×
  repetition of the paper and ``fold=3`` on the command line still wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from histo_lightning.resources import RESOURCES_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _if(condition: Any, then: Any, otherwise: Any = None) -> Any:
    return then if _truth(condition) else otherwise


def _truth(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    return a == b


def _repeat_seed(seed: int, repeat: int) -> int:
    from histo_lightning.data.bag_folds import repeat_seed

    return repeat_seed(int(seed), int(repeat))


def sweep_range(n: Any) -> str:
    """``"1,2,…,n"`` (see the module docstring); ``n`` must be a positive integer."""
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"hl.range: expected a positive number of folds or repetitions, got {n!r}")
    return ",".join(str(i) for i in range(1, int(n) + 1))


def register() -> None:
    OmegaConf.register_new_resolver("hl.root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("hl.resources", lambda: str(RESOURCES_DIR), replace=True)
    OmegaConf.register_new_resolver("hl.if", _if, replace=True)
    OmegaConf.register_new_resolver(
        "hl.all", lambda *values: all(map(_truth, values)), replace=True
    )
    OmegaConf.register_new_resolver("hl.eq", _eq, replace=True)
    OmegaConf.register_new_resolver("hl.repeat_seed", _repeat_seed, replace=True)
    OmegaConf.register_new_resolver("hl.range", sweep_range, replace=True)


register()
