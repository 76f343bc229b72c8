"""What the synthetic dataset generators share: the runner that writes a tree once, atomically.

A generator (one per dataset: :mod:`~histo_lightning.data.synthetic.breakhis`,
:mod:`~histo_lightning.data.synthetic.paip`, :mod:`~histo_lightning.data.synthetic.tupac16`) is a
:class:`SyntheticGenerator`: its config type (a frozen dataclass with :class:`SyntheticConfig`, every
field of which enters the tree's name) and a function writing the tree into a folder. This module does
the rest the same way for all of them:

* the tree lives at ``<data_dir>/synthetic/<dataset>-<config hash>`` (:meth:`SyntheticGenerator.ensure`);
* it is written into a temporary sibling ``<root>.tmp-<uuid>`` that is renamed to ``root`` when complete
  (removed on failure), so ``root`` is either absent or complete; concurrent processes (DDP ranks, parallel
  sweep jobs) generate it once under a file lock and the others reuse it; leftovers of crashed runs are
  removed;
* ``SYNTHETIC_DATA.json`` marks it as synthetic and holds the config (a tree is reused only when its marker
  matches the config and the generator version);
* the images are rendered by :func:`run_tasks`: in-process or on joblib's loky workers (single-threaded
  OpenCV each), results in task order, with the progress bar of :mod:`histo_lightning.utils.progress`.
  Every image draws from its own seeded random stream, so the files are byte-identical for any number of
  workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import cv2
from filelock import FileLock
from joblib import Parallel, delayed

from histo_lightning.utils.io import fsync_tree
from histo_lightning.utils.progress import progress_bar

log = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC_DATA.json"


def config_fingerprint(config: dict, generator_version: int) -> str:
    """Short stable hex hash of a generator's JSON config and version (names the tree's folder)."""
    payload = json.dumps({"config": config, "generator_version": generator_version}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def marker_matches(root: Path, generator_version: int, config: dict) -> bool:
    """Whether ``root`` holds a finished synthetic tree written by this generator version from ``config``."""
    try:
        marker = json.loads((Path(root) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("synthetic") is True
        and marker.get("generator_version") == generator_version
        and marker.get("config") == config
    )


def write_tree_atomically(root: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder and rename it to ``root``.

    Raises:
        FileExistsError: ``root`` exists already, or appeared while writing.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.mkdir()
        write(tmp)
        fsync_tree(tmp)
        try:
            tmp.rename(root)
        except OSError as err:
            if root.exists():
                raise FileExistsError(
                    f"{root} appeared while generating; refusing to overwrite"
                ) from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_tree(
    root: Path, is_complete: Callable[[Path], bool], write: Callable[[Path], None], label: str
) -> Path:
    """``root``, generated once with ``write`` unless ``is_complete(root)`` already.

    Raises:
        FileExistsError: ``root`` exists but is not a complete tree for this config.
    """
    root = Path(root)
    if is_complete(root):
        log.info("Reusing %s (not real data) at %s", label, root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        if is_complete(root):
            log.info("Reusing %s (not real data) at %s", label, root)
            return root
        if root.exists():
            raise FileExistsError(
                f"{root} exists but is not a {label} tree for this config; remove it"
            )
        for stale in root.parent.glob(f"{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("Generating %s (not real data) at %s", label, root)
        return write_tree_atomically(root, write)


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
        return config_fingerprint(self.to_json_dict(), self.generator_version)


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

    def generate(
        self, root: str | Path, config: SyntheticConfig, workers: int = 1, progress: bool = True
    ) -> Path:
        """Write the tree of ``config`` at ``root`` atomically and return ``root``.

        Raises:
            FileExistsError: ``root`` already exists.
        """
        return write_tree_atomically(Path(root), self._writer(config, workers, progress))

    def ensure(
        self, data_dir: str | Path, config: SyntheticConfig, workers: int = 1, progress: bool = True
    ) -> Path:
        """The tree of ``config`` at ``<data_dir>/synthetic/<dataset>-<fingerprint>``, generated once.

        Raises:
            FileExistsError: the folder exists but is not a tree generated from ``config``.
        """
        root = Path(data_dir) / "synthetic" / f"{self.dataset}-{config.fingerprint()}"
        return ensure_tree(
            root,
            lambda r: marker_matches(r, config.generator_version, config.to_json_dict()),
            self._writer(config, workers, progress),
            self.label,
        )


__all__ = [
    "MARKER_FILE",
    "SyntheticConfig",
    "SyntheticGenerator",
    "config_fingerprint",
    "ensure_tree",
    "marker_matches",
    "run_tasks",
    "write_tree_atomically",
]
