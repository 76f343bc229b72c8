"""What the synthetic dataset generators share: the runner that writes a tree once, atomically.

A generator (one per dataset: :mod:`~histo_lightning.data.synthetic.breakhis`,
:mod:`~histo_lightning.data.synthetic.paip`, :mod:`~histo_lightning.data.synthetic.tupac16`) is a
:class:`SyntheticGenerator`: its config type (a frozen dataclass with :class:`SyntheticConfig`, every
field of which enters the tree's name) and a function writing the tree into a folder. This module does
the rest the same way for all of them:

* the tree lives at ``<data_dir>/synthetic/<dataset>-<config hash>`` (:meth:`SyntheticGenerator.ensure`)
  and is a store of :mod:`histo_lightning.stores.store` (kind ``synthetic``): written once under a lock
  into a temporary sibling renamed when complete, so concurrent processes (DDP ranks, parallel sweep jobs)
  generate it once and the others reuse it; ``cache.json`` records its files, checked on every open (a
  damaged tree is generated again, with a logged line);
* ``SYNTHETIC_DATA.json`` marks it as synthetic and holds the config;
* the images are rendered by :func:`run_tasks`: in-process or on joblib's loky workers (single-threaded
  OpenCV each), results in task order, with the progress bar of :mod:`histo_lightning.utils.progress`.
  Every image draws from its own seeded random stream, so the files are byte-identical for any number of
  workers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import cv2
from joblib import Parallel, delayed

from histo_lightning.stores.keys import digest
from histo_lightning.stores.store import Store
from histo_lightning.utils.progress import progress_bar

log = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC_DATA.json"
TREE_FORMAT = 1


Task = TypeVar("Task")
Result = TypeVar("Result")


def _single_threaded(fn: Callable[[Task], Result], task: Task) -> Result:
    """Worker entry: one OpenCV thread per worker (the workers provide the parallelism)."""
    cv2.setNumThreads(1)
    return fn(task)


def run_tasks(
    fn: Callable[[Task], Result],
    tasks: Sequence[Task],
    workers: int,
    description: str,
    progress: bool = True,
    batch_size: int | str = "auto",
) -> list[Result]:
    """``[fn(task) for task in tasks]``, in-process (``workers <= 1``) or on joblib's loky workers.

    loky rather than a ``multiprocessing`` pool: generation also runs inside Hydra launcher workers
    (joblib/loky, submitit) and DDP ranks, where a spawn pool cannot start its children (inside a loky
    worker the default start method is ``loky``, which spawned children cannot resolve, and the pool
    respawns them forever).
    """
    results: list[Result] = []
    with progress_bar(disable=not progress) as bar:
        job = bar.add_task(description, total=len(tasks))
        if workers <= 1:
            outputs = map(fn, tasks)
        else:
            parallel = Parallel(
                n_jobs=workers, backend="loky", return_as="generator", batch_size=batch_size
            )
            outputs = parallel(delayed(_single_threaded)(fn, task) for task in tasks)
        for output in outputs:
            results.append(output)
            bar.advance(job)
    return results


class SyntheticConfig:
    """Mixin of the generators' frozen config dataclasses: JSON form and fingerprint."""

    generator_version: ClassVar[int] = 1

    def to_json_dict(self) -> dict:
        """The fields as JSON-compatible values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[call-overload]

    def fingerprint(self) -> str:
        """Short stable hex hash of all fields and the generator version (names the tree's folder)."""
        return digest(
            {"config": self.to_json_dict(), "generator_version": self.generator_version}, 12
        )


@dataclass(frozen=True)
class SyntheticGenerator:
    """One dataset's synthetic generator (see the module docstring).

    Attributes:
        dataset: the tree's folder prefix and the marker's ``dataset`` (``breakhis``, ``tupac16``, ...).
        display_name: the real dataset's name (``not <display_name>`` in the marker, log messages).
        module: the generator's module, recorded in the marker.
        make_config: builds the config from settings (``dataset.synthetic`` of the data module).
        write: ``write(folder, config, workers, progress)`` writes the tree into the (empty) ``folder`` and
            returns the marker's dataset-specific entries.
    """

    dataset: str
    display_name: str
    module: str
    make_config: Callable[..., SyntheticConfig]
    write: Callable[[Path, Any, int, bool], dict[str, Any]]

    @property
    def label(self) -> str:
        return f"SYNTHETIC {self.display_name}"

    def marker(self, config: SyntheticConfig, extras: dict[str, Any]) -> dict[str, Any]:
        """Content of ``SYNTHETIC_DATA.json``."""
        return {
            "synthetic": True,
            "dataset": self.dataset,
            "generator": self.module,
            "generator_version": config.generator_version,
            "config": config.to_json_dict(),
            **extras,
            "note": f"Synthetic data generated by histo-lightning; not {self.display_name}. "
            "Numbers on it say nothing about real performance.",
        }

    def _writer(
        self, config: SyntheticConfig, workers: int, progress: bool
    ) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            extras = self.write(folder, config, workers, progress)
            marker = json.dumps(self.marker(config, extras), indent=2)
            (folder / MARKER_FILE).write_text(marker + "\n")

        return write

    def store(self, root: str | Path, config: SyntheticConfig, owned: bool) -> Store:
        """The tree at ``root`` as a store: made by this generator (module, version) from ``config``."""
        made_by = {
            "dataset": self.dataset,
            "generator": self.module,
            "generator_version": config.generator_version,
            "config": config.to_json_dict(),
        }
        return Store(root, "synthetic", made_by, TREE_FORMAT, owned=owned)

    def generate(
        self, root: str | Path, config: SyntheticConfig, workers: int = 1, progress: bool = True
    ) -> Path:
        """Write the tree of ``config`` at ``root`` atomically and return ``root``.

        Raises:
            FileExistsError: ``root`` already exists.
        """
        root = Path(root)
        if root.exists():
            raise FileExistsError(f"{root} already exists; refusing to overwrite it")
        self.store(root, config, owned=False).ensure(
            self._writer(config, workers, progress), f"{self.label}, not real data"
        )
        return root

    def ensure(
        self, data_dir: str | Path, config: SyntheticConfig, workers: int = 1, progress: bool = True
    ) -> Path:
        """The tree of ``config`` at ``<data_dir>/synthetic/<dataset>-<fingerprint>``, generated once
        (again, with a logged line, when it is damaged or was written before the store mechanism)."""
        root = Path(data_dir) / "synthetic" / f"{self.dataset}-{config.fingerprint()}"
        write = self._writer(config, workers, progress)

        def generate(folder: Path) -> None:
            log.info("Generating %s (not real data) at %s", self.label, root)
            write(folder)

        if not self.store(root, config, owned=True).ensure(
            generate, f"{self.label}, not real data"
        ):
            log.info("Reusing %s (not real data) at %s", self.label, root)
        return root


__all__ = [
    "MARKER_FILE",
    "SyntheticConfig",
    "SyntheticGenerator",
    "run_tasks",
]
