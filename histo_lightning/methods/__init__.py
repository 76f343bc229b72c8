"""The papers, one package each: everything of one method found by one name.

Each package holds its method's LightningModules, stage functions, callbacks, table layouts and plots,
over the core (stores, the stage runner, the data module bases, shared nets, losses and metrics); its
``__init__`` names the paper (``PAPER``) and its experiments (``EXPERIMENTS``, the files in
``conf/experiment/``) and imports nothing, so ``python run.py --help`` lists them without loading torch.
See ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: the method packages, in the order ``python run.py --help`` lists them
METHODS = ("chsnet", "smse", "rakhlin", "li_mil")


def method_packages() -> list[ModuleType]:
    """Every method package (``PAPER``, ``EXPERIMENTS``, ``SUMMARY``), in :data:`METHODS` order."""
    return [importlib.import_module(f"{__name__}.{name}") for name in METHODS]
