"""Make Lightning's DDP subprocess launcher start its extra ranks in this Hydra job.

Lightning starts the extra DDP ranks by re-running the script with ``sys.argv`` plus
``hydra.run.dir=<HydraConfig.run.dir>``. Two things go wrong with Hydra as configured here:

* ``run.dir`` holds a ``${now:...}`` run id, which a child would resolve to a new time (a new folder);
* in a multirun job, ``sys.argv`` holds ``-m`` and the whole sweep, so each rank would start a sweep.

Before the trainer starts we point both at this job: ``run.dir`` becomes the job's output folder, and in
a multirun job ``sys.argv`` becomes the job's own overrides. SLURM (ranks started by ``srun``) and
``ddp_spawn`` do not re-run the script and are unaffected.
"""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write


def prepare_ddp_subprocess_launch() -> None:
    """Pin ``hydra.run.dir`` to this job's folder and, in a multirun job, ``sys.argv`` to its overrides."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None)
    if output_dir:
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = output_dir
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
