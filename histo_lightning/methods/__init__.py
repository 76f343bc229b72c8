"""The papers, one package each: everything of one method found by one name.

Each package holds its method's LightningModules, stage functions, callbacks, table layouts and plots,
over the core (stores, the stage runner, the data module bases, shared nets, losses and metrics); its
``__init__`` names the paper (``PAPER``), says what it does in one line (``SUMMARY``) and lists its
experiments (``EXPERIMENTS``, the files in ``conf/experiment/``) and imports nothing, so
``python run.py --help`` lists them without loading torch. The packages are found, not registered: a new
``methods/<name>/`` is listed by ``--help`` and its ``tables.py`` read by the table registry without an
edit elsewhere. See ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from types import ModuleType

#: the order ``python run.py --help`` lists the papers in; a package not named here comes after them
METHODS = ("chsnet", "smse", "rakhlin", "li_mil")


def method_names() -> list[str]:
    """Every method package under ``histo_lightning/methods/`` (found, not registered)."""
    found = {m.name for m in pkgutil.iter_modules(__path__) if m.ispkg}
    return [n for n in METHODS if n in found] + sorted(found - set(METHODS))


def method_packages() -> list[ModuleType]:
    """Every method package (``PAPER``, ``SUMMARY``, ``EXPERIMENTS``), in :func:`method_names` order."""
    return [importlib.import_module(f"{__name__}.{name}") for name in method_names()]


def method_modules(leaf: str) -> list[str]:
    """``histo_lightning.methods.<name>.<leaf>`` of every method that has one (e.g. its ``tables``)."""
    names = (f"{__name__}.{name}.{leaf}" for name in method_names())
    return [n for n in names if importlib.util.find_spec(n) is not None]


__all__ = ["METHODS", "method_modules", "method_names", "method_packages"]
