"""histo-lightning entry point: ``python run.py experiment=NAME fold=K`` (``-m`` for sweeps).

Checks the command line (:func:`histo_lightning.cli.check_command_line`), composes ``conf/train.yaml``
with the overrides and runs :func:`histo_lightning.entry.run`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import histo_lightning.utils.resolvers  # noqa: F401  (registers ${hl.root:} and friends)
from histo_lightning.cli import check_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # torch and Lightning are imported here, after the command line and the pre-flight checks passed
    from histo_lightning.entry import run

    return run(cfg)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])  # an unknown option or key, bad syntax: one error line
    main()
