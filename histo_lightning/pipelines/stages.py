"""The four kinds of stage the runner (:mod:`histo_lightning.pipelines.runner`) knows.

Keys every stage takes: ``kind``; ``enabled`` (default true); ``log_prefix`` (default: the stage name;
``""`` logs unprefixed, as a single fit or a method's final test does); ``callbacks`` (named
``_target_`` nodes added to the stage's trainer); ``inject`` (constructor arguments resolved from earlier
stages: ``{final_net: refined.inference_net}``); ``data`` (a list of ``{fn: package.module.function,
...kwargs}`` called with the :class:`~histo_lightning.pipelines.runner.StageContext` when the stage
starts: they set on the stage's OWN view of the data module, ``ctx.datamodule``, what this stage uses,
e.g. the mined examples; no other stage sees it). Every stage that runs is seeded from ``(seed, stage
name)`` first (:mod:`histo_lightning.utils.seeding`).

``fit``
    ``module`` (a LightningModule node), ``init_from`` (start from an earlier fit's best weights),
    ``max_epochs`` (capped by ``trainer.max_epochs``), ``monitor``/``monitor_mode`` (default: the module's
    hyper-parameters), ``ckpt_path`` (resume from this checkpoint instead of the stage's own
    ``last.ckpt``). Checkpoints go to ``<stage>/checkpoints`` (best by the monitor, and last, written at
    the end of every epoch); without a validation set (``split.val_fraction=0``) the last checkpoint is
    the one kept and used. Every training epoch starts from ``(stage seed, epoch)``
    (:class:`~histo_lightning.utils.seeding.EpochSeeding`), so a fit killed in any epoch resumes from the
    last completed one and ends with the same weights as in one go (the data module's training loaders
    are each an :class:`~histo_lightning.data.transforms.EpochSeededLoader`; a data module with plain loaders
    resumes, but not exactly).
``test``
    ``from`` (an earlier fit: its module with its best weights) or ``module`` (+ ``inject``);
    ``ckpt_path`` evaluates that checkpoint instead when the ``from`` stage did not run (``train=false``).
``predict``
    ``from`` or ``module`` (and ``ckpt_path`` as for ``test``); ``subset`` (the data module's
    ``predict_dataset``/``sample_manifest`` name); ``max_samples`` + ``sample_seed`` (a random subset of at
    most that many samples, e.g. for a t-SNE); ``batch_size``, ``num_workers``; ``output``: ``key`` (the ``predict_step`` entry to store, default
    ``features``), ``dtype`` (float16|float32), ``shared`` (true: a keyed cache under
    ``paths.cache_dir/features`` that other runs and folds reuse; false: ``<stage>/features``), ``path`` (an
    explicit cache folder; refused when it holds another producer's features), ``flush_every``.
    A module with a ``feature_shape()`` method (one sample's output shape) is not run on a sample to find
    it (expensive modules; stages whose rows are all cached then compute nothing at all).
    ``trainer.limit_predict_batches`` (``debug=smoke``) limits a stage's own store to the samples it
    reaches and does not apply to a shared one, nor to one with ``output.complete: true`` (its readers look
    rows up by sample index), which are computed complete (see :class:`PredictStage`).
    Callbacks with an ``on_features_ready(cache, ctx)`` method (e.g. hard-example mining) are called with
    the complete cache, also when every row was cached already.
``function``
    ``fn`` (``package.module.function``) and ``kwargs``: ``fn(ctx, **kwargs)`` returns a dict whose
    ``metrics`` are logged (stage-prefixed) and whose ``outputs`` later stages read (paths relative to the
    stage folder). Runs on rank 0 only unless ``all_ranks: true``; the other ranks read its ``done.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from histo_lightning.callbacks.feature_writer import FeatureCacheWriter
from histo_lightning.data.base import transform_description
from histo_lightning.errors import ConfigError
from histo_lightning.pipelines.protocols import (
    DeclaresOutputShape,
    FeatureConsumer,
    InferenceModule,
)
from histo_lightning.pipelines.run_report import scalars
from histo_lightning.stores.feature_cache import FeatureCache, default_cache_dir
from histo_lightning.stores.keys import frame_digest
from histo_lightning.stores.store import State, StoreError, inspect
from histo_lightning.utils.batchnorm import check_training_batch_size
from histo_lightning.utils.checkpoints import check_checkpoint, load_state_dict
from histo_lightning.utils.instantiate import build
from histo_lightning.utils.logging import get_logger
from histo_lightning.utils.seeding import EpochSeeding

if TYPE_CHECKING:
    from histo_lightning.pipelines.runner import StageContext, StageResult

log = get_logger(__name__)

FEATURE_CODE_VERSION = 1  # bump when the code that computes cached features changes its numbers


def load_weights(module: torch.nn.Module, checkpoint: str | Path, key: str = "checkpoint") -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``module`` (plain tensors only, never pickle)."""
    module.load_state_dict(load_state_dict(checkpoint, key=key))


class Stage:
    """A stage of one kind, bound to its context; :meth:`run` returns what goes into ``done.json``."""

    kind = ""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.cfg: DictConfig = ctx.stage_cfg

    @classmethod
    def restore(cls, ctx: StageContext, result: StageResult) -> None:
        """Called when the stage is skipped (finished earlier): nothing to do by default."""

    def relative(self, path: str | Path | None) -> str | None:
        if not path:
            return None
        path = Path(path)
        try:
            return str(path.relative_to(self.ctx.dir))
        except ValueError:
            return str(path)

    def source_module(self) -> tuple[pl.LightningModule, str]:
        """The module this stage evaluates and where its weights come from: ``from: <fit stage>`` (its
        best weights; or ``ckpt_path`` when that stage did not run, as with ``train=false``) or ``module:``
        built here (``inject`` resolved)."""
        source = self.cfg.get("from")
        ckpt_path = self.cfg.get("ckpt_path")
        if source and source in self.ctx.runner.results:
            best = self.ctx.result(source).info.get("best_checkpoint")
            where = str(self.ctx.result(source).dir / best) if best else f"stage {source}"
            return self.ctx.module(source), where
        if source:
            order = self.ctx.runner.stage_order()
            earlier = order[: order.index(self.ctx.name)] if self.ctx.name in order else []
            if source not in earlier:
                self.ctx.result(source)  # raises: a later, unknown or misspelt stage
        if source and ckpt_path:
            module = self.ctx.runner.build_module(source)
            load_weights(module, ckpt_path, key="ckpt_path")
            return module, str(ckpt_path)
        if source:
            raise ConfigError(
                f"stage {self.ctx.name} uses the model of stage {source!r}, which did not run "
                "(train=false needs ckpt_path=<checkpoint to evaluate>)"
            )
        if "module" not in self.cfg:
            raise ConfigError(
                f"pipeline.stages.{self.ctx.name} needs from: <fit stage> or module: <LightningModule>"
            )
        return self.ctx.build(self.cfg.module), "built from config"

    def run(self) -> dict[str, Any]:
        raise NotImplementedError


class FitStage(Stage):
    kind = "fit"

    def checkpoint_callbacks(self, monitor: str | None, mode: str) -> list[ModelCheckpoint]:
        """The checkpoint kept by ``monitor`` (the configured ``callbacks.model_checkpoint``), and
        ``last.ckpt`` written at the end of every epoch, which a killed fit resumes from.

        Lightning (2.6) updates a monitored callback's ``save_last`` only in epochs that improved the
        monitor, so a second callback without a monitor writes ``last.ckpt``; without a monitor (no
        validation set) the one callback saves every epoch and its ``save_last`` does that already.
        """
        dirpath = str(self.ctx.dir / "checkpoints")
        settings = {"dirpath": dirpath, "monitor": monitor, "mode": mode}
        if monitor is not None:
            settings["save_last"] = False
        template = (self.ctx.cfg.get("callbacks") or {}).get("model_checkpoint")
        if template is not None:
            kept = build(template, **settings)
        else:
            settings.setdefault("save_last", True)
            kept = ModelCheckpoint(
                **settings, filename="epoch_{epoch:03d}", auto_insert_metric_name=False
            )
        if monitor is None:
            return [kept]
        last = ModelCheckpoint(
            dirpath=dirpath,
            filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            save_on_train_epoch_end=True,  # every epoch, also with trainer.check_val_every_n_epoch > 1
        )
        return [kept, last]

    def max_epochs(self) -> int | None:
        cap = self.ctx.cfg.trainer.get("max_epochs")
        own = self.cfg.get("max_epochs")
        if own is None:
            return cap
        return int(own) if cap is None or cap < 0 else min(int(own), int(cap))

    def resume_from(self) -> str | None:
        explicit = self.cfg.get("ckpt_path")
        if explicit:
            return check_checkpoint(explicit)  # a missing or pickle-needing file: one line
        last = self.ctx.dir / "checkpoints" / "last.ckpt"
        if self.ctx.cfg.get("resume", True) and last.is_file():
            log.info(f"Stage {self.ctx.name}: resuming from {last}")
            return check_checkpoint(last, key=f"resume (stage {self.ctx.name})")
        return None

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        if not ctx.cfg.get("train", True):
            raise ConfigError(
                f"train=false but stage {ctx.name} has not finished in {ctx.dir}: nothing to evaluate"
            )
        module = ctx.runner.build_module(ctx.name)
        init_from = self.cfg.get("init_from")
        if init_from:
            module.load_state_dict(ctx.module(init_from).state_dict())
            log.info(f"Stage {ctx.name}: starting from the weights of stage {init_from}")
        datamodule = ctx.datamodule
        check_training_batch_size(module, getattr(datamodule, "batch_size", None))
        has_val = (
            bool(datamodule.has_validation()) if hasattr(datamodule, "has_validation") else True
        )
        hparams = getattr(module, "hparams", {})
        monitor = self.cfg.get("monitor") or hparams.get("monitor")
        mode = self.cfg.get("monitor_mode") or hparams.get("monitor_mode", "max")
        if not has_val:
            log.info(f"Stage {ctx.name}: no validation set, the last checkpoint is the one used")
        checkpoints = self.checkpoint_callbacks(monitor if has_val else None, mode)
        checkpoint = checkpoints[0]
        seeding = [EpochSeeding(ctx.seed)] if ctx.seed is not None else []
        callbacks = [*seeding, *checkpoints, *ctx.generic_callbacks("fit"), *ctx.stage_callbacks()]
        # no validation set: no validation loop either (Lightning would warn about an empty loader list)
        no_validation = {} if has_val else {"limit_val_batches": 0, "num_sanity_val_steps": 0}
        trainer = ctx.trainer(callbacks, module, max_epochs=self.max_epochs(), **no_validation)
        resumed_from = self.resume_from()
        log.info(f"Stage {ctx.name}: fitting for up to {trainer.max_epochs} epoch(s)")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)
        metrics = scalars(trainer.callback_metrics)
        best_key = f"{monitor}_best" if monitor else None
        if (
            has_val
            and best_key
            and best_key not in metrics
            and checkpoint.best_model_score is not None
        ):
            # resumed from a last.ckpt written after the final epoch: nothing left to run or log, but the
            # restored checkpoint callback knows the best score
            metrics[best_key] = float(checkpoint.best_model_score)
        last_path = (
            checkpoints[-1].best_model_path if len(checkpoints) > 1 else checkpoint.last_model_path
        )
        best = checkpoint.best_model_path or last_path
        ctx.runner.remember_module(ctx.name, module)
        if best:
            load_weights(module, best)
            module._histo_loaded_best = True
        return {
            "best_checkpoint": self.relative(best),
            "last_checkpoint": self.relative(last_path),
            "monitor": monitor if has_val else None,
            "has_validation": has_val,
            "resumed_from": resumed_from,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "metrics": ctx.prefixed(metrics),
        }


class TestStage(Stage):
    kind = "test"

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        module, tested = self.source_module()
        trainer = ctx.trainer([*ctx.generic_callbacks("test"), *ctx.stage_callbacks()], module)
        log.info(f"Stage {ctx.name}: testing ({tested})")
        trainer.test(module, datamodule=ctx.datamodule)
        return {
            "tested_checkpoint": tested,
            "metrics": ctx.prefixed(scalars(trainer.callback_metrics)),
        }


class _Renumbered(Dataset):
    """Items ``rows`` of ``dataset``, their ``"index"`` renumbered 0…len(rows)-1."""

    def __init__(self, dataset: Any, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, np.asarray(rows)
        self.collate_fn = getattr(dataset, "collate_fn", None)
        self.transform = getattr(dataset, "transform", None)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return {**self.dataset[int(self.rows[i])], "index": i}


def _collate(dataset: Any) -> Any:
    return getattr(dataset, "collate_fn", None) or default_collate


def _subset(dataset: Any, manifest: pd.DataFrame, rows: np.ndarray) -> tuple[Any, pd.DataFrame]:
    """Items ``rows`` of ``dataset`` renumbered 0…len(rows)-1, and their manifest rows with the original
    item in ``source_index`` (kept from an earlier subset)."""
    part = manifest.iloc[rows].reset_index(drop=True)
    if "source_index" in part:
        part = part.drop(columns="index")
    else:
        part = part.rename(columns={"index": "source_index"})
    part.insert(0, "index", np.arange(len(rows)))
    return _Renumbered(dataset, rows), part


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block without changing the global random states (Python, numpy, torch CPU and CUDA)."""
    import random

    python_state = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global state seed_everything sets)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002


class PredictStage(Stage):
    """Trainer.predict into a feature cache (a store of :mod:`histo_lightning.stores.store`).

    **Limited runs** (``trainer.limit_predict_batches``, e.g. ``debug=smoke``) never leave a store
    half-built for others, and the stages after them only ever read complete stores:

    * a *shared* store (``output.shared: true`` or an explicit ``output.path``) is a precomputation that
      other runs and folds reuse: what it holds depends on its producer and its data, never on a debug
      limit, so the limit does not apply to it; a limited run computes it complete (or finds it
      complete). Chosen over keeping a limited run's rows in its own folder because its readers need
      every row (MIL feature bags read every instance, FMB's K-means any hard negative, LightGBM every
      image of the fold), so a limited run could not use the rows it kept; the rows it computes are
      the ones the next full run would compute, so nothing is wasted. Measured on a shared 2-core CPU
      (one thread), cold cache: ``mil_hnm dataset=colon_synthetic debug=smoke`` computes its 11,431
      instance features in 21 s (its two limited batches: about 1 s); ``rakhlin_demo debug=smoke`` its four
      descriptor caches of 100 images in 265 s (8 images each: 21 s in all); the same smoke commands on
      the warm cache then take 65 s and 90 s.
    * a stage's *own* store (``output.shared: false``: mining scores, embeddings for a t-SNE) is an
      evaluation: a limited run predicts the samples the limit allows (the first ``limit × batch_size``)
      and its store holds exactly those, complete (``source_index`` in the manifest names the original
      rows), in the stage's folder.

    Filling is kept apart from the run's random streams (the global states are restored afterwards), so a
    stage that computes rows and one that finds them cached leave the same state to the stages after them.
    """

    kind = "predict"
    limited_of: int | None = None  # samples of the subset when a limited run keeps the first rows

    @classmethod
    def restore(cls, ctx: StageContext, result: StageResult) -> None:
        """A skipped stage whose store is no longer complete (pruned, damaged) computes it again (the
        same producer and data give the same folder and rows), so the stages after it can read it."""
        folder = result.path("cache")
        status = inspect(folder)
        if status.state == State.COMPLETE:
            return
        why = f" ({status.reason})" if status.reason else ""
        log.warning(
            f"Stage {ctx.name}: its feature cache {folder} is {status.state.value}{why}; computing it again"
        )
        stage = cls(ctx)
        module, weights = stage.source_module()
        dataset, manifest = stage.samples()
        cache = stage.open_cache(module, weights, dataset, manifest)
        if cache.folder != folder:
            raise StoreError(
                f"stage {ctx.name}: its feature cache {folder} is {status.state.value} and the stage now "
                f"opens {cache.folder}; rerun with resume=false"
            )
        stage.fill(cache, module, dataset, [])

    def producer(self, module: pl.LightningModule, weights: str) -> dict[str, Any]:
        """What produces the rows: the module's own fingerprint, or the fit stage (or checkpoint) it comes
        from."""
        if isinstance(module, InferenceModule):
            return module.fingerprint()
        source = self.cfg.get("from")
        if source and source in self.ctx.runner.results:
            result = self.ctx.result(source)
            return {"stage": source, "fit": f"{result.fingerprint}:{result.info.get('token')}"}
        if source:
            from histo_lightning.nets.weights import state_dict_digest

            return {"checkpoint": weights, "weights_sha256": state_dict_digest(module)}
        raise ConfigError(
            f"pipeline.stages.{self.ctx.name}: the module has no fingerprint() and no from: stage, so "
            "its cached outputs could not be told apart from another producer's"
        )

    def probe_shape(self, module: pl.LightningModule, dataset: Any, key: str) -> tuple[int, ...]:
        if isinstance(module, DeclaresOutputShape):  # nothing computed to find the shape
            return tuple(int(s) for s in module.feature_shape())
        batch = _collate(dataset)([dataset[0]])
        was_training = module.training
        module.eval()
        with torch.no_grad(), preserved_random_state():
            out = module.predict_step(batch, 0)
        module.train(was_training)
        if not isinstance(out, dict) or key not in out or "index" not in out:
            raise ConfigError(
                f"pipeline.stages.{self.ctx.name}: {type(module).__name__}.predict_step must return a dict "
                f"with 'index' and {key!r} (output.key)"
            )
        return tuple(int(s) for s in out[key].shape[1:])

    @property
    def shared(self) -> bool:
        """Whether the stage writes a store other runs reuse (``output.shared`` or ``output.path``)."""
        output = self.cfg.get("output") or {}
        return bool(output.get("shared", False) or output.get("path"))

    @property
    def computed_complete(self) -> bool:
        """Whether a limited run still computes every row: a shared store, or a stage's own store whose
        readers look rows up by sample index (``output.complete: true``, e.g. the MIL embeddings that
        FMB's K-means reads for any hard negative)."""
        output = self.cfg.get("output") or {}
        return self.shared or bool(output.get("complete", False))

    @property
    def batch_size(self) -> int:
        return int(self.cfg.get("batch_size") or self.ctx.cfg.dataset.get("eval_batch_size", 64))

    def limited_rows(self, n: int) -> int | None:
        """How many of ``n`` samples ``trainer.limit_predict_batches`` lets a prediction reach (None: all;
        Lightning's reading: an int is a number of batches, a float a fraction of them)."""
        limit = self.ctx.cfg.trainer.get("limit_predict_batches")
        if limit is None or isinstance(limit, bool):
            return None
        batches = -(-n // self.batch_size)
        if isinstance(limit, int):
            reached = min(int(limit), batches)
        else:
            reached = int(batches * float(limit)) if float(limit) < 1.0 else batches
            reached = max(reached, 1) if float(limit) > 0 else 0
        if reached >= batches:
            return None
        if reached <= 0:
            raise ConfigError(
                f"trainer.limit_predict_batches={limit} leaves stage {self.ctx.name} nothing to predict"
            )
        return reached * self.batch_size

    def samples(self) -> tuple[Any, Any]:
        """The subset's dataset and manifest; with ``max_samples``, a random subset of that many
        (``sample_seed``); in a limited run of a stage's own store, the first rows the limit reaches.
        A subset is renumbered 0…n-1, with the original item in ``source_index``."""
        ctx = self.ctx
        subset = self.cfg.get("subset", "train")
        dataset = ctx.datamodule.predict_dataset(subset)
        manifest = ctx.datamodule.sample_manifest(subset)
        if len(manifest) != len(dataset):
            raise RuntimeError(
                f"{type(ctx.datamodule).__name__}: sample_manifest({subset!r}) has {len(manifest)} rows "
                f"for {len(dataset)} samples"
            )
        limit = self.cfg.get("max_samples")
        if limit is not None and len(manifest) > int(limit):
            rng = np.random.default_rng(int(self.cfg.get("sample_seed", 0)))
            rows = np.sort(rng.choice(len(manifest), size=int(limit), replace=False))
            dataset, manifest = _subset(dataset, manifest, rows)
        reached = None if self.computed_complete else self.limited_rows(len(manifest))
        if reached is not None:
            log.info(
                f"Stage {ctx.name}: trainer.limit_predict_batches="
                f"{ctx.cfg.trainer.get('limit_predict_batches')} predicts the first {reached} of "
                f"{len(manifest)} samples; the stage's own store holds exactly those"
            )
            self.limited_of = len(manifest)
            dataset, manifest = _subset(dataset, manifest, np.arange(reached))
        return dataset, manifest

    def open_cache(
        self, module: pl.LightningModule, weights: str, dataset: Any, manifest: Any
    ) -> FeatureCache:
        ctx, output = self.ctx, self.cfg.get("output") or {}
        subset = self.cfg.get("subset", "train")
        key = output.get("key", "features")
        dtype = output.get("dtype", "float16")
        made_by = {
            "producer": self.producer(module, weights),
            "data": {
                "dataset": ctx.datamodule.name,
                "subset": subset,
                "samples": frame_digest(manifest),
                "transform": transform_description(getattr(dataset, "transform", None)),
                **({"limited": {"of": self.limited_of}} if self.limited_of else {}),
            },
            "output_key": key,
            "code_version": FEATURE_CODE_VERSION,
        }
        owned = False
        if output.get("path"):
            folder = Path(output.path)
        elif output.get("shared", False):
            label = f"{ctx.datamodule.name}-{subset}-{type(module).__name__}"
            root = Path(ctx.cfg.paths.cache_dir) / "features"
            folder, owned = default_cache_dir(root, label, {**made_by, "dtype": dtype}), True
        else:
            folder, owned = ctx.dir / "features", True  # the stage's own folder
        shape = self.probe_shape(module, dataset, key)
        return FeatureCache.open(folder, made_by, manifest, shape, dtype, owned=owned)

    def fill(
        self, cache: FeatureCache, module: pl.LightningModule, dataset: Any, consumers: list
    ) -> int:
        """Compute the rows ``cache`` lacks and mark it complete; returns how many were computed.

        One process fills a store at a time (a parallel sweep job needing the same store waits, then
        computes what is still missing); under DDP the ranks fill it together, each its own rows.
        """
        ctx, output = self.ctx, self.cfg.get("output") or {}
        writer = FeatureCacheWriter(
            cache, output.get("key", "features"), output.get("flush_every", 1024)
        )
        with preserved_random_state():
            # the limit acts through the samples (a stage's own store) or not at all (a shared one)
            trainer = ctx.trainer(
                [writer, *ctx.generic_callbacks("predict"), *consumers],
                module,
                limit_predict_batches=1.0,
            )
            filling = cache.filling() if trainer.world_size == 1 else contextlib.nullcontext()
            with filling:
                missing = cache.missing()
                if len(missing):
                    self._predict(trainer, cache, module, dataset, missing)
                else:
                    log.info(
                        f"Stage {ctx.name}: all {cache.n} rows cached in {cache.folder}; nothing to "
                        "compute"
                    )
                    cache.finalize()
        if not cache.complete:
            raise StoreError(
                f"stage {ctx.name}: {len(cache.missing())} of {cache.n} rows of {cache.folder} were not "
                "computed"
            )
        return len(missing)

    def _predict(
        self,
        trainer: pl.Trainer,
        cache: FeatureCache,
        module: pl.LightningModule,
        dataset: Any,
        missing: np.ndarray,
    ) -> None:
        ctx = self.ctx
        limit = ctx.cfg.trainer.get("limit_predict_batches")
        complete_anyway = (
            f" (trainer.limit_predict_batches={limit} does not apply to this store: it is "
            "computed complete, never left half-built for its readers)"
            if self.computed_complete and self.limited_rows(cache.n) is not None
            else ""
        )
        log.info(
            f"Stage {ctx.name}: {cache.n - len(missing)} of {cache.n} rows cached in {cache.folder}; "
            f"computing {len(missing)}{complete_anyway}"
        )
        loader = DataLoader(
            Subset(dataset, missing.tolist()),
            batch_size=self.batch_size,
            num_workers=int(self.cfg.get("num_workers", ctx.cfg.dataset.get("num_workers", 0))),
            shuffle=False,
            collate_fn=_collate(dataset),
        )
        trainer.predict(module, dataloaders=loader, return_predictions=False)

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        module, weights = self.source_module()
        dataset, manifest = self.samples()
        cache = self.open_cache(module, weights, dataset, manifest)
        consumers = ctx.stage_callbacks()
        computed = self.fill(cache, module, dataset, consumers)
        info: dict[str, Any] = {
            "metrics": {},
            "outputs": {"cache": self.relative(cache.folder)},
            "rows": cache.n,
            "computed": computed,
        }
        for consumer in consumers:
            if isinstance(consumer, FeatureConsumer):
                extra = consumer.on_features_ready(cache, ctx) or {}
                info["metrics"].update(ctx.prefixed(extra.get("metrics", {})))
                info["outputs"].update(extra.get("outputs", {}))
        ctx.log_metrics(info["metrics"])
        return info


class FunctionStage(Stage):
    kind = "function"

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        if not ctx.is_global_zero and not self.cfg.get("all_ranks", False):
            return {}
        spec = {"fn": self.cfg.get("fn"), **(self.cfg.get("kwargs") or {})}
        returned = ctx.call(spec) or {}
        if not isinstance(returned, dict):
            raise TypeError(f"{spec['fn']} must return a dict (metrics, outputs) or None")
        metrics = ctx.prefixed(returned.pop("metrics", {}) or {})
        ctx.log_metrics(metrics)
        return {"metrics": metrics, "outputs": returned.pop("outputs", {}) or {}, **returned}


STAGE_KINDS: dict[str, type[Stage]] = {
    cls.kind: cls for cls in (FitStage, TestStage, PredictStage, FunctionStage)
}

__all__ = ["STAGE_KINDS", "FitStage", "FunctionStage", "PredictStage", "Stage", "TestStage"]
