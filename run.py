"""histo-lightning entry point: ``python run.py experiment=NAME fold=K`` (``-m`` for sweeps).

Composes ``conf/train.yaml`` with the command-line overrides and runs :func:`histo_lightning.train.run`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import histo_lightning.utils.resolvers  # noqa: F401  (registers ${hl.root:} and friends)
from histo_lightning.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
