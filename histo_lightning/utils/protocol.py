"""The jobs of a sweep, listed without running them: what ``python run.py -m <overrides>`` would launch.

Each paper experiment declares its protocol in ``hydra.sweeper.params`` (e.g. the MIL experiments:
``fold: ${hl.range:${method.protocol.n_folds}}``, ``repeat: ${hl.range:${method.protocol.repetitions}}``),
so ``python run.py -m experiment=mil_hnm dataset=colon`` runs every fold × repetition of the paper, and
an override on the command line (``fold=3``) replaces that key's list. :func:`sweep_jobs` composes the
config as Hydra does for the sweep and expands the declared params with the command line's overrides by
Hydra's own basic sweeper (:meth:`BasicSweeper.split_arguments`), so the list is the one Hydra launches::

    python -m histo_lightning.utils.protocol experiment=mil_hnm dataset=colon     # 50 jobs, one per line
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

from histo_lightning.cli import CONF, CONFIG_NAME


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job of ``python run.py -m *overrides`` (basic sweeper)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import histo_lightning.utils.resolvers  # noqa: F401  (${hl.range:} and friends)

    parser = OverridesParser.create()
    # the config the sweeper sees: Hydra composes a multirun's primary config without the sweeps of the
    # command line (so a swept dataset=colon,ucsb resolves the protocol of the experiment's own dataset)
    fixed = [o for o in overrides if not parser.parse_overrides([o])[0].is_sweep_override()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                config_name=CONFIG_NAME,
                overrides=list(fixed),
                return_hydra_config=True,
            )
    finally:
        GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.sweeper.get("params") or {}, resolve=True)
    # BasicSweeper.sweep: the declared params first, then the command line (a later key replaces one)
    declared = [f"{key}={value}" for key, value in params.items()]
    arguments = parser.parse_overrides([*declared, *overrides])
    (jobs,) = BasicSweeper.split_arguments(arguments, None)
    return jobs


def main(argv: Sequence[str] | None = None) -> None:
    """Print the jobs of ``python run.py -m <argv>``, one per line, and how many."""
    jobs = sweep_jobs(list(sys.argv[1:] if argv is None else argv))
    for job in jobs:
        print(" ".join(job))
    print(f"{len(jobs)} job(s)", file=sys.stderr)


if __name__ == "__main__":
    main()


__all__ = ["main", "sweep_jobs"]
