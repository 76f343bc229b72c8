"""One mechanism for every on-disk store: a key, a lock, an atomic build, ``cache.json`` and a state.

A *store* is a folder of files computed from something else (decoded images, instances cut from images,
features of a frozen network, a slide's patch index, a synthetic dataset tree). What the files hold is the
store type's business (:mod:`~histo_lightning.stores.image_store`, :mod:`~histo_lightning.stores.instance_store`,
:mod:`~histo_lightning.stores.feature_cache`, :mod:`~histo_lightning.data.wsi`,
:mod:`~histo_lightning.data.synthetic.tree`); everything else is here, once:

* **Key.** :meth:`Store.keyed` names the folder ``<root>/<label>-<digest>`` by a digest
  (:func:`~histo_lightning.stores.keys.digest`) of everything that produced it: the store's ``kind``, its
  ``made_by`` document (dataset files, settings, encoder and weights, code version, ...), its
  ``format_version`` and ``layout`` (shapes, dtypes). Another producer lands in another folder; the same
  producer finds its store again. A store at a folder the user chose is :class:`Store` with
  ``owned=False``: a folder holding another producer's store is refused (:class:`StoreMismatch`), never
  overwritten.
* **Lock.** ``<folder>.lock`` beside the folder serialises creation, completion and rebuilding between
  processes (parallel sweep jobs, DDP ranks). A store filled row by row (the feature cache) is filled by one
  process at a time (``<folder>.fill.lock``, :meth:`Store.filling`): another process needing it waits,
  then computes only what is still missing (nothing, when the first finished).
* **Atomic build.** A store is built in a temporary sibling ``.<name>.<random>.tmp``
  (:func:`~histo_lightning.utils.io.atomic_dir`) that is renamed to ``<folder>`` when complete, so a
  killed build leaves a leftover that ``python -m histo_lightning.caches prune`` removes, never a
  half-written store under the real name.
* **cache.json** describes the store::

      {"store_format": 1, "kind": "features", "format_version": 1, "state": "complete",
       "created": "<ISO time>", "completed": "<ISO time>", "made_by": {...}, "layout": {...},
       "files": {"features.npy": {"size": 48000, "checksum": "<sampled sha256>"}, ...}}

* **State**, explicit: ``complete`` (readers use it), ``partial`` (resumable: created and being filled;
  a later run completes it, computing only what it lacks, never refuses it), ``corrupt`` (a recorded file
  is missing, has another size or another checksum, or ``cache.json`` is unreadable or disagrees with
  the key) or ``old format`` (written before this mechanism). Readers only ever see complete stores.
* **Verification on every open.** The size of every recorded file is compared with the disk, and the
  checksum of the largest ones (:data:`CHECKED_FILES`) is recomputed: a
  :func:`~histo_lightning.stores.keys.sampled_checksum` reads about 1 MiB of a file whatever its size, so
  it runs on every open of a 10 GB feature file. A corrupt or old store the mechanism can rebuild is
  rebuilt with a logged line; where it cannot (the producer is gone, e.g. a finished stage's output read
  by a later stage), opening fails with one ``error:`` line naming the folder and what is wrong
  (:class:`StoreError`).

Every store also holds ``.last_used`` (touched on each open): ``python -m histo_lightning.caches list``
shows each store's kind, what made it, its state and its size on disk; ``verify`` checks them all;
``prune`` removes stale ones and leftovers of killed builds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from histo_lightning.errors import HistoError
from histo_lightning.stores.keys import (
    CHECKSUM,
    canonical,
    describe_differences,
    digest,
    sampled_checksum,
)
from histo_lightning.utils.io import atomic_dir, read_json, write_json_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)

STORE_FORMAT = 1
INFO_FILE = "cache.json"
LAST_USED = ".last_used"
CHECKED_FILES = 8  # the largest files whose checksum every open recomputes (all sizes are compared)
_NOT_RECORDED = frozenset({INFO_FILE, LAST_USED})


class State(str, Enum):
    ABSENT = "absent"
    PARTIAL = "partial"
    COMPLETE = "complete"
    CORRUPT = "corrupt"
    OLD = "old format"


class StoreError(HistoError):
    """A store that cannot be used here (corrupt or incomplete, and not rebuildable by this reader)."""


class StoreMismatch(StoreError):
    """A folder the user chose holds a store made by something else; the message names what differs."""


@dataclass(frozen=True)
class Status:
    """A store's state, why (for ``corrupt``/``old format``) and its ``cache.json``."""

    state: State
    reason: str = ""
    info: dict[str, Any] | None = None

    @property
    def usable(self) -> bool:
        return self.state in (State.PARTIAL, State.COMPLETE)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def touch_last_used(folder: str | Path) -> None:
    """Set ``<folder>/.last_used``'s modification time to now (the store was opened)."""
    with contextlib.suppress(OSError):  # a read-only store still works; it just looks unused
        (Path(folder) / LAST_USED).touch()


def disk_usage(path: str | Path) -> int:
    """Bytes ``path`` really occupies on disk (allocated blocks: a sparse file counts what it holds)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(OSError):
            return path.lstat().st_blocks * 512
        return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(folder) / name).lstat().st_blocks * 512
    return total


def record_files(folder: Path, checksums: bool = True) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, checksum}}`` of every file in ``folder`` (not cache.json/.last_used)."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(folder).as_posix()
        if relative in _NOT_RECORDED:
            continue
        size = path.stat().st_size
        files[relative] = {
            "size": size,
            "checksum": sampled_checksum(path, size) if checksums else None,
        }
    return files


def check_files(folder: Path, files: Mapping[str, Mapping[str, Any]], every: bool = False) -> str:
    """Why ``folder``'s files disagree with their record ("" when they agree).

    Every recorded size is compared; checksums are recomputed for the :data:`CHECKED_FILES` largest
    recorded files (all of them with ``every``).
    """
    for relative, record in files.items():
        path = folder / relative
        try:
            size = path.stat().st_size
        except OSError:
            return f"{relative} is missing"
        if size != int(record["size"]):
            return f"{relative} holds {size:,} bytes, {int(record['size']):,} recorded"
    summed = [(int(r["size"]), name) for name, r in files.items() if r.get("checksum")]
    chosen = sorted(summed, reverse=True) if every else sorted(summed, reverse=True)[:CHECKED_FILES]
    for size, relative in chosen:
        if sampled_checksum(folder / relative, size) != files[relative]["checksum"]:
            return f"{relative} is damaged (its checksum differs from the recorded one)"
    return ""


def inspect(folder: str | Path, every: bool = False) -> Status:
    """The state of the store at ``folder`` from its own record (no producer compared)."""
    folder = Path(folder)
    if not folder.is_dir():
        return Status(State.ABSENT)
    if not (folder / INFO_FILE).is_file():
        if not any(folder.iterdir()):
            return Status(State.ABSENT)
        return Status(
            State.OLD, f"no {INFO_FILE}: written before the store mechanism, or not a store"
        )
    try:
        info = read_json(folder / INFO_FILE)
    except (OSError, ValueError) as err:
        return Status(State.CORRUPT, f"its {INFO_FILE} is unreadable ({type(err).__name__})")
    if not isinstance(info, dict) or info.get("store_format") != STORE_FORMAT:
        version = info.get("store_format") if isinstance(info, dict) else None
        return Status(
            State.OLD,
            f"store format {version}, not {STORE_FORMAT}"
            if version
            else "written before the store mechanism",
            info if isinstance(info, dict) else None,
        )
    reason = check_files(folder, info.get("files") or {}, every=every)
    if reason:
        return Status(State.CORRUPT, reason, info)
    state = State.COMPLETE if info.get("state") == State.COMPLETE.value else State.PARTIAL
    return Status(state, "", info)


def lock_beside(path: str | Path) -> FileLock:
    """The inter-process lock of ``path`` (a store folder, or a file written once such as a split file):
    ``<path>.lock`` beside it."""
    return FileLock(f"{path}.lock")


@contextlib.contextmanager
def hold(lock: FileLock, waiting: str) -> Iterator[None]:
    """Hold ``lock``; when another process holds it, log ``waiting`` once and wait for it."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info(waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _label(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class Store:
    """One store folder and the producer that wants it (see the module docstring).

    Args:
        folder: where the store lives.
        kind: what it holds (``images``, ``instances``, ``features``, ``patch_index``, ``synthetic``...).
        made_by: everything that produced it (JSON-able): listed by ``caches list``, compared on open.
        format_version: the kind's own layout version (bump when the files change meaning).
        layout: kind-specific facts compared on open (shapes, dtypes, digests of a manifest).
        owned: the folder is named by the key (a mismatching record means damage: rebuild); False for a
            folder the user chose (a mismatch is another producer's store: refused).
    """

    def __init__(
        self,
        folder: str | Path,
        kind: str,
        made_by: Mapping[str, Any],
        format_version: int = 1,
        layout: Mapping[str, Any] | None = None,
        owned: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.kind = kind
        self.made_by = canonical(dict(made_by))
        self.format_version = int(format_version)
        self.layout = canonical(dict(layout or {}))
        self.owned = owned

    @classmethod
    def keyed(
        cls,
        root: str | Path,
        label: str,
        kind: str,
        made_by: Mapping[str, Any],
        format_version: int = 1,
        layout: Mapping[str, Any] | None = None,
        length: int = 16,
    ) -> Store:
        """The store at ``<root>/<label>-<digest of kind, made_by, format and layout>``."""
        store = cls(Path(root), kind, made_by, format_version, layout)
        store.folder = Path(root) / f"{_label(label)}-{digest(store.identity, length)}"
        return store

    # ---- identity and state -------------------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        return {
            "store_format": STORE_FORMAT,
            "kind": self.kind,
            "format_version": self.format_version,
            "made_by": self.made_by,
            "layout": self.layout,
        }

    @property
    def name(self) -> str:
        return f"{self.kind} store {self.folder}"

    def lock(self) -> FileLock:
        return lock_beside(self.folder)

    def status(self, every: bool = False) -> Status:
        """This store's state for this producer: its own record, and whether the producer matches."""
        status = inspect(self.folder, every=every)
        if status.info is None or status.state in (State.ABSENT, State.OLD):
            return status
        recorded = {k: status.info.get(k) for k in self.identity}
        if recorded == self.identity:
            return status
        differences = "; ".join(describe_differences(recorded, self.identity, there="recorded"))
        if not self.owned:
            raise StoreMismatch(
                f"{self.name} was made by something else and is never mixed or overwritten: "
                f"{differences}. Use another folder (or the default, keyed one), or delete this one"
            )
        return Status(State.CORRUPT, f"its {INFO_FILE} does not match its key ({differences})")

    def touch(self) -> None:
        touch_last_used(self.folder)

    # ---- building -------------------------------------------------------------------------------------
    def _info(self, state: State, files: dict[str, Any], created: str | None = None) -> dict:
        return {
            **self.identity,
            "state": state.value,
            "created": created or now_iso(),
            "completed": now_iso() if state == State.COMPLETE else None,
            "checksum": CHECKSUM,
            "files": files,
        }

    def _discard(self, status: Status) -> None:
        """Remove an unusable store (with a logged line) so that it can be built again."""
        if status.state == State.ABSENT:
            if self.folder.is_dir():  # an empty folder
                shutil.rmtree(self.folder, ignore_errors=True)
            return
        if not self.owned and (status.info is None or status.state == State.OLD):
            # a folder the user chose, holding something we cannot tell to be this producer's
            raise StoreError(
                f"{self.name} is {status.state.value} ({status.reason}) and is not ours to replace; "
                "delete it to compute it again"
            )
        log.warning(f"{self.name} is {status.state.value} ({status.reason}); rebuilding it")
        # renamed first, so the real name is gone at once; the leftover's removal may take a while
        aside = Path(
            tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".tmp", dir=self.folder.parent)
        )
        os.replace(self.folder, aside / "old")
        shutil.rmtree(aside, ignore_errors=True)

    def _create(self, fill: Callable[[Path], Any], state: State) -> None:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.folder) as tmp:
            fill(tmp)
            files = record_files(tmp, checksums=state == State.COMPLETE)
            write_json_atomic(tmp / INFO_FILE, self._info(state, files))

    def ensure(self, build: Callable[[Path], Any], what: str = "") -> bool:
        """Make sure the store is complete: build it with ``build(tmp)`` (filling a temporary folder)
        unless it is complete already. Returns whether it was built now.

        Another process building the same store at the same time is waited for (its store is then
        used); a corrupt or old-format store is rebuilt, with a logged line.
        """
        if self.status().state == State.COMPLETE:  # the usual case, without taking the lock
            self.touch()
            return False
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with hold(self.lock(), f"{self.name}: another process is building it; waiting"):
            status = self.status()
            if status.state == State.COMPLETE:
                self.touch()
                return False
            self._discard(status)
            log.info(f"{self.name}: building{f' ({what})' if what else ''}")
            self._create(build, State.COMPLETE)
        self.touch()
        return True

    def open_partial(self, create: Callable[[Path], Any]) -> Status:
        """A store filled in parts: created empty with ``create(tmp)`` (state ``partial``) when absent,
        corrupt or old; a partial or complete one is kept. Returns its status."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with hold(self.lock(), f"{self.name}: another process is creating it; waiting"):
            status = self.status()
            if not status.usable:
                self._discard(status)
                self._create(create, State.PARTIAL)
                status = self.status()
        self.touch()
        return status

    @contextlib.contextmanager
    def filling(self) -> Iterator[None]:
        """Hold the right to fill this (partial) store; another process filling it is waited for."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with hold(
            lock_beside(f"{self.folder}.fill"),
            f"{self.name}: another process is filling it; waiting, then computing what it still lacks",
        ):
            yield

    def mark_complete(self) -> None:
        """Record every file's size and checksum and mark the (partial) store complete."""
        with self.lock():
            status = self.status()
            if status.state == State.COMPLETE:
                return
            if status.state != State.PARTIAL or status.info is None:
                raise StoreError(
                    f"{self.name} cannot be completed: it is {status.state.value} ({status.reason})"
                )
            info = self._info(State.COMPLETE, record_files(self.folder), status.info.get("created"))
            write_json_atomic(self.folder / INFO_FILE, info)

    def require(self, state: State = State.COMPLETE, hint: str = "") -> Status:
        """The store's status, or a :class:`StoreError` naming it when it is not in ``state`` (complete,
        or at least partial) — for readers that cannot rebuild it."""
        status = self.status()
        wanted = (State.COMPLETE,) if state == State.COMPLETE else (State.PARTIAL, State.COMPLETE)
        if status.state not in wanted:
            why = f" ({status.reason})" if status.reason else ""
            raise StoreError(
                f"{self.name} is {status.state.value}{why}{'; ' + hint if hint else ''}"
            )
        self.touch()
        return status


__all__ = [
    "INFO_FILE",
    "LAST_USED",
    "STORE_FORMAT",
    "State",
    "Status",
    "Store",
    "StoreError",
    "StoreMismatch",
    "check_files",
    "disk_usage",
    "hold",
    "inspect",
    "lock_beside",
    "now_iso",
    "record_files",
    "touch_last_used",
]
