"""The stage runner: every experiment is an ordered list of named stages declared in config.

``python run.py`` (:mod:`histo_lightning.entry`) runs ``cfg.pipeline`` with :func:`run_pipeline`::

    pipeline:
      name: CHS-Net
      stages:                      # run in this order (or in pipeline.order)
        screening: {kind: fit, module: ${model.screening}}
        mining: {kind: predict, from: screening, subset: train, callbacks: {...}}
        refined: {kind: fit, module: ${model.refined}, data: [{fn: ..., ...}]}
        detection: {kind: test, module: {...}, inject: {final_net: refined.inference_net}}

A stage is a ``fit`` (a LightningModule and the data module on a Trainer), a ``predict`` (a
``Trainer.predict`` whose outputs a writer stores in a feature cache), a ``test`` or a plain ``function``
(K-means, LightGBM, a report); see :mod:`histo_lightning.pipelines.stages` for each kind's keys. Stage
objects are instantiated from config; the results of earlier stages are injected by name
(``inject: {net: screening.inference_net}``). A stage declared with ``foreach: <items>`` runs once per
item as the stages ``<name>_<item>`` (``{item}`` in its strings replaced; :mod:`.expand`), e.g. the fits
of an inner cross-validation.

Every stage works in its own folder ``<run>/<NN>_<name>/`` and ends by writing ``done.json`` atomically.
Its fingerprint digests the stage's resolved config, the seed, the semantic trainer and dataset
settings, the data module's fingerprint and the fingerprint of the stage before it. On a rerun of the same
run directory:

* a finished stage whose fingerprint matches is skipped (and the log says so); its outputs are read back
  from its folder;
* a stage whose config or inputs changed is redone — its folder is cleared — and so is every stage after
  it; the log names the keys that changed;
* an interrupted fit resumes from its ``last.ckpt`` (written at the end of every epoch) and repeats the
  epochs after it exactly; an interrupted prediction computes only the rows its feature cache lacks.

**A stage's result depends on its own declaration and the finished outputs of the stages it names, never
on which stages happened to run earlier in this process** (the same command gives the same
``metrics.json`` whether stores were cold or warm and whether it ran in one go or was killed and rerun):

* *randomness by name*: a stage that runs is seeded from ``(seed, stage name)`` when it starts, and every
  training epoch of a fit from ``(stage seed, epoch)`` at its first batch, workers and sampler
  included (:mod:`histo_lightning.utils.seeding`); no random state is carried from stage to stage, so a
  skipped stage, a cache that made a predict stage compute nothing, or a resume leaves the others' streams
  as they are;
* *a data view per stage*: ``StageContext.datamodule`` is the stage's own shallow copy of the run's data
  module (the data itself is shared, nothing is read twice), made when the stage starts and given to the
  stage's ``data`` hooks (``data: [{fn: package.module.function, ...kwargs}]``), which declare what this
  stage uses — feature bags instead of pixels, extra generated bags, mined examples, the unlabelled test
  set. The run's data module itself is never changed; a view's description is recorded in the stage's
  ``done.json`` (``data``).

The run ends with the contract of every run: ``metrics.json`` (the ``test/*`` metrics), ``run_info.json``
(data, stages with their status and fingerprints, machine), the CV summary of a sweep. Under DDP every
rank runs the same sequence; rank 0 writes the stage files and the ranks meet after each stage.
"""

from __future__ import annotations

import copy
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.seed import isolate_rng

from histo_lightning.errors import ConfigError
from histo_lightning.pipelines.run_report import (
    departures_from_paper,
    log_hyperparameters,
    write_run_report,
)
from histo_lightning.pipelines.stages import STAGE_KINDS, load_weights
from histo_lightning.utils.fingerprint import describe_differences, digest
from histo_lightning.utils.hydra_ddp import prepare_ddp_subprocess_launch
from histo_lightning.utils.instantiate import (
    build,
    build_datamodule,
    import_function,
    instantiate_callbacks,
    instantiate_loggers,
)
from histo_lightning.utils.io import read_json, write_json_atomic
from histo_lightning.utils.logging import get_logger
from histo_lightning.utils.seeding import seed_run, seed_stage

log = get_logger(__name__)

DONE = "done.json"
STARTED = "started.json"
#: bump when what a stage computes from the same inputs changes (2: stages seeded by name, own data views)
STAGE_RECORD_VERSION = 2
# trainer and dataset settings that change how fast, not what, a stage computes
NON_SEMANTIC_TRAINER_KEYS = frozenset(
    {
        "default_root_dir",
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "logger",
        "callbacks",
        "profiler",
        "num_sanity_val_steps",
    }
)
NON_SEMANTIC_DATASET_KEYS = frozenset(
    {"num_workers", "pin_memory", "prepare_workers", "eval_batch_size", "persistent_workers"}
)
# generic callbacks (the `callbacks` group) each stage kind takes; the stages add their own
GENERIC_CALLBACKS_EXCLUDED = {
    "fit": {"test_report", "model_checkpoint"},
    "test": {"model_checkpoint", "early_stopping", "lr_monitor"},
    "predict": {"model_checkpoint", "early_stopping", "lr_monitor", "test_report"},
    "function": set(),
}


def is_global_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def barrier(name: str) -> None:
    """Wait for every rank (a no-op outside an initialised process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def to_plain(node: Any) -> Any:
    """A resolved, JSON-able copy of a config node (or the value itself)."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def set_logger_prefix(loggers: list, prefix: str) -> None:
    """Make Lightning's loggers prefix every key with ``prefix`` (``screening/`` → ``screening/val/ap``).

    Uses the loggers' own prefix mechanism (CSV, TensorBoard and W&B loggers have one); a logger without it
    gets unprefixed keys.
    """
    for logger in loggers:
        if hasattr(logger, "_prefix"):
            logger._prefix = prefix.rstrip("/")
            logger.LOGGER_JOIN_CHAR = "/"


# ---- stage records --------------------------------------------------------------------------------------
@dataclass
class StageResult:
    """What a finished (or skipped) stage left: its ``done.json`` and, for fits, the trained module."""

    name: str
    kind: str
    dir: Path
    fingerprint: str
    status: str
    info: dict[str, Any]
    module: pl.LightningModule | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.info.get("metrics", {}))

    @property
    def outputs(self) -> dict[str, Any]:
        return dict(self.info.get("outputs", {}))

    def path(self, key: str) -> Path:
        """An output path recorded relative to the stage folder, made absolute."""
        value = self.outputs[key]
        return self.dir / value


class StageContext:
    """What a stage sees: the config, its own view of the data, the loggers, its folder, its seed, earlier
    stages' results.

    Method functions (``kind: function``, ``data`` hooks) receive it as their first argument.
    """

    def __init__(
        self, runner: PipelineRunner, name: str, index: int, stage_cfg: DictConfig
    ) -> None:
        self.runner = runner
        self.name = name
        self.index = index
        self.stage_cfg = stage_cfg
        self.dir = runner.run_dir / f"{index:02d}_{name}"
        #: the stage's seed, from (run seed, stage name) (None without a run seed)
        self.seed: int | None = None
        self._view: Any = None

    # ---- shared objects ---------------------------------------------------------------------------------
    @property
    def cfg(self) -> DictConfig:
        return self.runner.cfg

    @property
    def datamodule(self) -> Any:
        """This stage's own view of the run's data module (built on first use, see :meth:`data_view`)."""
        if self._view is None:
            self._view = self.data_view()
        return self._view

    def data_view(self) -> Any:
        """A shallow copy of the run's data module (the data itself — memmaps, indexes, splits — is
        shared, nothing is read again) given to the stage's ``data`` hooks, which set on it what this
        stage trains or predicts on (feature bags, generated bags, mined examples). What they set stays
        in this stage: the run's data module is never changed, so what a stage sees depends on its own
        declaration and the finished outputs of the stages it names, not on which stages ran before it
        in this process."""
        view = copy.copy(self.runner.datamodule)
        if isinstance(view, pl.LightningDataModule):
            view.trainer = None  # attached by this stage's own trainers
        self._view = view
        for spec in self.stage_cfg.get("data") or []:
            self.call(spec)
        return view

    @property
    def loggers(self) -> list:
        return self.runner.loggers

    @property
    def run_dir(self) -> Path:
        return self.runner.run_dir

    @property
    def is_global_zero(self) -> bool:
        return is_global_zero()

    @property
    def log_prefix(self) -> str:
        prefix = self.stage_cfg.get("log_prefix", self.name)
        return f"{prefix}/" if prefix else ""

    def prefixed(self, metrics: Mapping[str, float]) -> dict[str, float]:
        prefix = self.log_prefix
        return {k if k.startswith(prefix) else prefix + k: float(v) for k, v in metrics.items()}

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Send ``metrics`` (stage-prefixed) to every logger, from rank 0."""
        if not self.is_global_zero or not metrics:
            return
        set_logger_prefix(self.loggers, "")
        for logger in self.loggers:
            logger.log_metrics(self.prefixed(metrics), step=step)

    # ---- earlier stages ------------------------------------------------------------------------------------
    def result(self, name: str) -> StageResult:
        """The result of the earlier stage ``name``."""
        if name not in self.runner.results:
            enabled = [n for n in self.runner.results]
            raise ConfigError(
                f"pipeline.stages.{self.name} refers to stage {name!r}, which has not run before it "
                f"(disabled, misspelt or later); finished stages: {enabled}"
            )
        return self.runner.results[name]

    def module(self, name: str) -> pl.LightningModule:
        """The trained module of the earlier fit stage ``name``, with its best weights."""
        return self.runner.trained_module(self.result(name))

    def ref(self, spec: str | None) -> Any:
        """Resolve ``"<stage>.<attribute or output>..."``: a fit stage's module attribute (methods are
        called), another stage's ``outputs``/``metrics`` entries; None stays None."""
        if spec is None:
            return None
        stage, *path = str(spec).split(".")
        result = self.result(stage)
        obj: Any = self.module(stage) if result.kind == "fit" else result
        for part in path:
            obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
            if callable(obj) and not isinstance(obj, torch.nn.Module):
                obj = obj()
        return obj

    def build(self, node: Any, **kwargs: Any) -> Any:
        """Instantiate a config node, with the stage's ``inject`` references resolved as keyword arguments."""
        inject = self.stage_cfg.get("inject") or {}
        injected = {k: self.ref(v) for k, v in inject.items()}
        return build(node, **injected, **kwargs)

    def call(self, spec: Mapping[str, Any], **extra: Any) -> Any:
        """Call ``spec.fn`` (``package.module.function``) with this context and the spec's other keys."""
        spec = dict(to_plain(spec))
        target = spec.pop("fn", None)
        if not target:
            raise ConfigError(
                f"pipeline.stages.{self.name}: a function spec needs fn: package.module.name"
            )
        function = import_function(target, f"pipeline.stages.{self.name}.fn")
        return function(self, **spec, **extra)

    # ---- trainers --------------------------------------------------------------------------------------
    def generic_callbacks(self, kind: str) -> list[pl.Callback]:
        return instantiate_callbacks(self.cfg.get("callbacks"), GENERIC_CALLBACKS_EXCLUDED[kind])

    def stage_callbacks(self) -> list[pl.Callback]:
        return instantiate_callbacks(self.stage_cfg.get("callbacks"))

    def trainer(
        self,
        callbacks: list[pl.Callback],
        module: pl.LightningModule | None = None,
        **overrides: Any,
    ) -> pl.Trainer:
        """A Trainer with the configured settings, the run's loggers (stage-prefixed) and this folder."""
        set_logger_prefix(self.loggers, self.log_prefix)
        trainer = build(
            self.cfg.trainer,
            callbacks=callbacks,
            logger=self.loggers or False,
            default_root_dir=str(self.dir),
            **overrides,
        )
        self.runner.log_hparams_once(trainer, module)
        return trainer


# ---- the runner -------------------------------------------------------------------------------------------
class PipelineRunner:
    """Runs ``cfg.pipeline`` in the job's run directory (see the module docstring)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.paths.output_dir)
        pipeline = cfg.get("pipeline")
        if not pipeline or not pipeline.get("stages"):
            raise ConfigError("pipeline.stages is empty: an experiment must declare its stages")
        from histo_lightning.pipelines.expand import expand_pipeline

        self.pipeline = expand_pipeline(cfg)  # `foreach` stages become one named stage per item
        self.datamodule: Any = None
        self.loggers: list = []
        self.results: dict[str, StageResult] = {}
        self.metrics: dict[str, float] = {}
        self._modules: dict[str, pl.LightningModule] = {}
        self._hparams_logged = False

    # ---- the stage list ---------------------------------------------------------------------------------
    def stage_order(self) -> list[str]:
        stages = self.pipeline.stages
        order = list(self.pipeline.get("order") or stages.keys())
        unknown = [s for s in order if s not in stages]
        if unknown:
            raise ConfigError(
                f"pipeline.order names unknown stage(s) {unknown}; stages: {list(stages)}"
            )
        return order

    def check(self) -> None:
        """Stage kinds exist, every fixed-choice key and stage reference is valid
        (:func:`~histo_lightning.utils.choices.check_config`), and the method's own config checks
        (``pipeline.checks``) pass.

        ``pipeline.checks`` is a list of ``{fn: package.module.function, ...kwargs}`` called as
        ``fn(cfg, **kwargs)`` before anything runs; they raise a ConfigError naming the key that is wrong.
        ``pipeline.preflight`` checks are the same, but light (no torch, no timm): ``run.py`` calls them
        right after composing the config, before the heavy imports (:func:`run_preflight`), and they run
        here first too (a sweep job, ``HYDRA_FULL_ERROR=1``).
        """
        for name in self.stage_order():
            node = self.pipeline.stages[name]
            kind = node.get("kind") if isinstance(node, DictConfig) else None
            if kind not in STAGE_KINDS:
                raise ConfigError(
                    f"pipeline.stages.{name}.kind={kind!r}: expected one of {sorted(STAGE_KINDS)}"
                )
            if "setup" in node:
                raise ConfigError(
                    f"pipeline.stages.{name}.setup: stage hooks are now declared as data: [...] and "
                    "act on the stage's own view of the data module (rename the key)"
                )
        from omegaconf.errors import InterpolationKeyError

        from histo_lightning.utils.choices import check_config

        run_preflight(self.cfg)

        def method_checks() -> None:
            for spec in self.pipeline.get("checks") or []:
                spec = dict(to_plain(spec))
                import_function(spec.pop("fn"), "pipeline.checks.fn")(self.cfg, **spec)

        # The method's own checks first: they name the key a user set (``method.schedule='fast'``)
        # rather than the interpolation that the wrong value leaves dangling elsewhere. A check that
        # itself meets a dangling interpolation defers to the generic check, which names it.
        try:
            method_checks()
            checked = True
        except InterpolationKeyError:
            checked = False
        check_config(self.cfg)  # every method choice and stage reference, before anything runs
        if self.cfg.get("ckpt_path"):
            from histo_lightning.utils.checkpoints import check_checkpoint

            check_checkpoint(self.cfg.ckpt_path)  # before any data is read
        if not checked:
            method_checks()

    # ---- fingerprints -----------------------------------------------------------------------------------
    def semantic_settings(self) -> dict[str, Any]:
        trainer = {
            k: v
            for k, v in to_plain(self.cfg.trainer).items()
            if k not in NON_SEMANTIC_TRAINER_KEYS
        }
        dataset = {
            k: v
            for k, v in to_plain(self.cfg.dataset).items()
            if k not in NON_SEMANTIC_DATASET_KEYS
        }
        return {"seed": self.cfg.get("seed"), "trainer": trainer, "dataset": dataset}

    def stage_inputs(
        self, name: str, stage_cfg: DictConfig, upstream: str | None
    ) -> dict[str, Any]:
        """Everything a stage's fingerprint digests (recorded in ``started.json`` to explain a redo)."""
        data = self.datamodule.fingerprint() if hasattr(self.datamodule, "fingerprint") else None
        return {
            "stage": {"name": name, **to_plain(stage_cfg)},
            "settings": self.semantic_settings(),
            "data": data,
            "upstream": upstream,
            "record_version": STAGE_RECORD_VERSION,
        }

    # ---- loggers and hyper-parameters ------------------------------------------------------------------
    def log_hparams_once(self, trainer: pl.Trainer, module: pl.LightningModule | None) -> None:
        if self._hparams_logged or not trainer.loggers:
            return
        data = {"dataset": self.datamodule.name, "synthetic": self.datamodule.is_synthetic}
        log_hyperparameters(self.cfg, module, trainer, data)
        self._hparams_logged = True

    # ---- modules of fit stages -----------------------------------------------------------------------------
    def remember_module(self, name: str, module: pl.LightningModule) -> None:
        self._modules[name] = module

    def build_module(self, name: str) -> pl.LightningModule:
        """The module of stage ``name`` built from its config (``module`` + ``inject``), untrained."""
        stage_cfg = self.pipeline.stages[name]
        if "module" not in stage_cfg:
            raise ConfigError(f"pipeline.stages.{name}.module is missing (a LightningModule node)")
        return StageContext(self, name, 0, stage_cfg).build(stage_cfg.module)

    def trained_module(self, result: StageResult) -> pl.LightningModule:
        """A fit stage's module with its best (or last) weights, built and loaded once."""
        if result.kind != "fit":
            raise ConfigError(
                f"stage {result.name!r} is a {result.kind} stage, not a fit: it has no module"
            )
        module = self._modules.get(result.name)
        checkpoint = result.info.get("best_checkpoint")
        if module is None:
            # building draws initial weights (then replaced by the checkpoint's): the stage asking for it
            # (in a rerun; in one go the module is still in memory) must not see its random state move
            with isolate_rng():
                module = self.build_module(result.name)
            self._modules[result.name] = module
            if not checkpoint:
                raise ConfigError(
                    f"stage {result.name!r} finished without a checkpoint (e.g. debug=fdr), so its "
                    f"weights cannot be restored; rerun it (delete {result.dir})"
                )
        if checkpoint and not getattr(module, "_histo_loaded_best", False):
            load_weights(module, result.dir / checkpoint)
            module._histo_loaded_best = True
        return module

    # ---- one stage --------------------------------------------------------------------------------------------
    def run_stage(self, name: str, index: int, upstream: str | None, force: bool) -> StageResult:
        """Skip, redo or resume one stage (every rank makes the same decision from the same files)."""
        stage_cfg = self.pipeline.stages[name]
        ctx = StageContext(self, name, index, stage_cfg)
        inputs = self.stage_inputs(name, stage_cfg, upstream)
        fingerprint = digest(inputs)
        kind = stage_cfg.kind
        label = f"Stage {index:02d} {name} ({kind})"
        barrier("stage_read")
        done = read_json(ctx.dir / DONE)
        started = read_json(ctx.dir / STARTED)

        if done is not None and done.get("fingerprint") == fingerprint and not force:
            log.info(f"{label}: finished earlier with the same config and inputs, skipped")
            result = StageResult(name, kind, ctx.dir, fingerprint, "skipped", done)
            STAGE_KINDS[kind].restore(ctx, result)
            return result

        recorded = (started or {}).get("inputs")
        reason = None
        if force and ctx.dir.exists():
            reason = "redoing (resume=false)"
        elif recorded is not None and digest(recorded) != fingerprint:
            if recorded.get("stage") == inputs["stage"] and recorded.get("upstream") != upstream:
                reason = "redoing, because an earlier stage was redone"
            else:
                changes = describe_differences(recorded, inputs, here="now", there="before")
                reason = "redoing, its config or inputs changed: " + "; ".join(changes)
        elif ctx.dir.exists() and started is None:
            reason = "its folder holds no record of what made it"
        if reason is not None and is_global_zero():
            log.info(f"{label}: {reason}; clearing {ctx.dir}")
            shutil.rmtree(ctx.dir, ignore_errors=True)
        if is_global_zero():
            write_json_atomic(ctx.dir / STARTED, {"fingerprint": fingerprint, "inputs": inputs})
        barrier("stage_started")
        log.info(f"{label}: running in {ctx.dir}")
        began = time.time()
        ctx.seed = seed_stage(self.cfg.get("seed"), name)
        view = ctx.datamodule  # the stage's own data view, its data hooks applied
        info = STAGE_KINDS[kind](ctx).run()
        if (stage_cfg.get("data") or kind == "fit") and callable(getattr(view, "describe", None)):
            # what this stage's view held, as trained on (e.g. SMSE's pairing, resolved from the model)
            info["data"] = view.describe()
        info = {
            **info,
            "fingerprint": fingerprint,
            "token": uuid.uuid4().hex[:12],
            "kind": kind,
            "duration_s": round(time.time() - began, 1),
        }
        if is_global_zero():
            write_json_atomic(ctx.dir / DONE, info)
        barrier("stage_done")
        if not is_global_zero():
            info = read_json(ctx.dir / DONE) or info  # one token for all ranks
        status = "resumed" if info.get("resumed_from") else "ran"
        return StageResult(name, kind, ctx.dir, fingerprint, status, info, self._modules.get(name))

    # ---- the job ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        started = time.time()
        self.check()
        departures = departures_from_paper(self.cfg).get("departures_from_paper")
        if departures:
            log.warning(
                "Demo settings, departing from the paper: " + "; ".join(map(str, departures))
            )
        seed_run(self.cfg)
        self.datamodule = build_datamodule(self.cfg)
        self.datamodule.setup("fit")
        self.loggers = instantiate_loggers(self.cfg.get("logger"))
        prepare_ddp_subprocess_launch()

        upstream: str | None = None
        redo_all = not self.cfg.get("resume", True)
        index = 0
        for position, name in enumerate(self.stage_order(), start=1):
            stage_cfg = self.pipeline.stages[name]
            if not stage_cfg.get("enabled", True):
                log.info(f"Stage {position:02d} {name}: disabled by config")
                continue
            index = position
            result = self.run_stage(name, index, upstream, force=redo_all)
            self.results[name] = result
            self.metrics.update(result.metrics)
            # the next stage depends on this one's config AND on this very execution of it (its token):
            # a stage that ran again, even unchanged, makes the later ones stale
            upstream = f"{result.fingerprint}:{result.info.get('token')}"

        # run_info.json's "data": what the last fit stage trained on (its own view), else the run's data
        fit_views = [
            r.info["data"] for r in self.results.values() if r.kind == "fit" and "data" in r.info
        ]
        if is_global_zero():
            write_run_report(
                self.cfg,
                self.datamodule,
                self.metrics,
                started,
                **({"data": fit_views[-1]} if fit_views else {}),
                pipeline={
                    "name": self.pipeline.get("name"),
                    **dict(to_plain(self.pipeline.get("report") or {})),
                },
                stages={
                    name: {
                        "status": r.status,
                        "folder": r.dir.name,
                        "fingerprint": r.fingerprint,
                        **{k: v for k, v in r.info.items() if k not in ("fingerprint",)},
                    }
                    for name, r in self.results.items()
                },
            )
        return self.metrics


def run_preflight(cfg: DictConfig) -> None:
    """Call the pipeline's ``preflight`` checks (``fn(cfg, **kwargs)``; light: they import neither torch
    nor timm): each raises a ConfigError naming what is wrong and the way out."""
    from histo_lightning.utils.preflight import run_preflight as run_checks

    run_checks(cfg)


def optimized_metric(name: str, metrics: Mapping[str, float]) -> float:
    """The value returned to a sweeper for ``optimized_metric=name``.

    Without a validation set (``split.val_fraction=0``: train on all training patients, as the papers do)
    no ``val/<m>_best`` exists; the training metric of the last epoch (``train/<m>``, same direction) is
    returned instead, and the log says so. Anything else never logged is an error naming what was.
    """
    if name in metrics:
        return float(metrics[name])
    head, sep, tail = name.rpartition("val/")
    if sep and tail.endswith("_best"):
        fallback = f"{head}train/{tail.removesuffix('_best')}"
        if fallback in metrics:
            log.warning(
                f"optimized_metric={name} does not exist without a validation set; returning {fallback}"
            )
            return float(metrics[fallback])
    raise ConfigError(
        f"optimized_metric={name} was never logged; logged metrics: {sorted(metrics)}"
    )


def run_pipeline(cfg: DictConfig) -> dict[str, float]:
    """The default task: run the configured stages (see the module docstring) and return every metric."""
    return PipelineRunner(cfg).run()


__all__ = ["PipelineRunner", "StageContext", "StageResult", "optimized_metric", "run_pipeline"]
