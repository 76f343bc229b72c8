"""OmegaConf resolvers used by ``conf/`` (registered on import; ``run.py`` and the tests import this).

* ``${hl.root:}``: the repository root (the folder holding ``conf/`` and ``histo_lightning/``), so that
  default paths do not depend on the directory ``run.py`` is started from or on environment variables.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def register() -> None:
    OmegaConf.register_new_resolver("hl.root", lambda: str(PROJECT_ROOT), replace=True)


register()
