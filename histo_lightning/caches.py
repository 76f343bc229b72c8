"""Stores you can see, check and prune: ``python -m histo_lightning.caches list|verify|prune``.

Every on-disk store (:mod:`histo_lightning.stores.store`) is a folder holding ``cache.json`` (kind,
what made it, format, state, its files with sizes and checksums) and ``.last_used`` (touched on every
open). By default the command looks in ``paths.cache_dir`` (``data/cache``: decoded images, instance
stores, feature caches, patch indexes) and ``paths.data_dir/synthetic`` (generated datasets)::

    python -m histo_lightning.caches list [--cache-dir DIR ...]
    python -m histo_lightning.caches verify [--cache-dir DIR ...]
    python -m histo_lightning.caches prune --older-than 30 [--dry-run] [--cache-dir DIR ...]
    python -m histo_lightning.caches prune --leftovers-only [--dry-run]

``list`` shows one line per store: its size on disk (allocated blocks: a sparse, partly filled feature
cache counts what it holds), its state (``complete``, ``partial``: being filled or interrupted, completed
by the next run that needs it; ``corrupt``; ``old format``: written before the store mechanism), its
kind, when it was last used, and what made it (dataset, encoder, settings). ``verify`` checks every store
(every recorded file's size and checksum) and exits 1 naming each corrupt one. ``prune`` removes stores
not used for ``--older-than`` days, stores that can never be read again (corrupt, old format) and the
leftovers of interrupted builds (``.<name>.<random>.tmp``); a store whose lock a process holds (being
built or filled) is never removed. ``--dry-run`` lists what would go. A removed store is rebuilt by the
next run that needs it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import Timeout

from histo_lightning.stores.keys import flatten
from histo_lightning.stores.store import (
    INFO_FILE,
    LAST_USED,
    State,
    disk_usage,
    inspect,
    lock_beside,
    touch_last_used,
)

CACHE_INFO = INFO_FILE
LEFTOVER_MIN_AGE_S = 3600.0  # an unlocked temporary folder younger than this may be a running build
# made_by entries that say nothing to a reader of the list (digests, file identities)
_UNINFORMATIVE = {
    "files",
    "files_key",
    "samples",
    "manifest_sha256",
    "weights_sha256",
    "mtime_ns",
    "normalization",
}


@dataclass
class CacheEntry:
    """A store folder, or a leftover of an interrupted build."""

    path: Path
    kind: str
    size_bytes: int
    created: str
    last_used: float
    made_by: dict[str, Any]
    leftover: bool = False
    state: str = State.COMPLETE.value
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def age_days(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.last_used) / 86400.0


def _is_leftover(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.name != LAST_USED


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _entry(folder: Path, every: bool = False) -> CacheEntry:
    status = inspect(folder, every=every)
    info = status.info or {}
    marker = folder / LAST_USED
    last_used = (marker if marker.exists() else folder).stat().st_mtime
    return CacheEntry(
        folder,
        str(info.get("kind", "unknown")),
        disk_usage(folder),
        str(info.get("created") or _iso(folder.stat().st_mtime)),
        last_used,
        dict(info.get("made_by") or {}),
        state=status.state.value,
        reason=status.reason,
    )


def _looks_like_store(folder: Path) -> bool:
    """A store folder: it holds cache.json, or is a store older than cache.json (an image cache, a
    synthetic dataset tree)."""
    return (folder / INFO_FILE).is_file() or any(
        (folder / name).is_file() for name in ("manifest.json", "pixels.u8", "SYNTHETIC_DATA.json")
    )


def find_caches(cache_dir: str | Path, every: bool = False) -> Iterator[CacheEntry]:
    """Every store and build leftover under ``cache_dir`` (not descending into stores)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        for child in sorted(folder.iterdir()):
            if _is_leftover(child):
                stat = child.stat()
                yield CacheEntry(
                    child,
                    "leftover of an interrupted build",
                    disk_usage(child),
                    _iso(stat.st_mtime),
                    stat.st_mtime,
                    {},
                    leftover=True,
                    state="leftover",
                )
            elif child.is_dir() and not child.is_symlink():
                if _looks_like_store(child):
                    yield _entry(child, every)
                else:
                    stack.append(child)


def _locked(path: Path) -> bool:
    """Whether a process holds the build or fill lock of the store ``path``."""
    for lock_of in (path, Path(f"{path}.fill")):
        if not Path(f"{lock_of}.lock").exists():
            continue
        try:
            with lock_beside(lock_of).acquire(timeout=0):
                pass
        except Timeout:
            return True
    return False


def _build_in_progress(leftover: Path) -> bool:
    """Whether a build may still be writing ``leftover`` (its lock is held, or it is recent)."""
    stem = leftover.name[1:].rsplit(".", 2)[0]  # ".<name>.<random>.tmp" -> "<name>"
    if Path(f"{leftover.parent / stem}.lock").exists():
        return _locked(leftover.parent / stem)
    return time.time() - leftover.stat().st_mtime < LEFTOVER_MIN_AGE_S


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def describe_made_by(made_by: dict[str, Any], width: int = 110) -> str:
    """``dataset=…, encoder=…, crop_size=…``: the readable entries of ``made_by`` (no digests, no
    versions), the dataset first, then what produced it (the encoder), then the settings."""
    entries = []
    for key, value in flatten(made_by).items():
        names = key.split(".")
        if set(names) & _UNINFORMATIVE or isinstance(value, (dict, list)) or value in (None, ""):
            continue
        if names[-1].endswith("version") or names[-1] in (
            "output_key",
            "root",
            "reader",
            "generator",
        ):
            continue
        label = ".".join(names[-2:]) if names[-1] == "name" and len(names) > 1 else names[-1]
        identity = names[-1] in ("encoder", "name", "crop_size", "subset", "dtype")
        rank = 0 if "dataset" in names else 1 if identity else 2
        entries.append((rank, f"{label}={value}"))
    text = ", ".join(part for _, part in sorted(entries, key=lambda e: e[0]))
    return text if len(text) <= width else text[: width - 1] + "…"


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _all(cache_dirs: Iterable[str | Path], every: bool = False) -> list[tuple[Path, CacheEntry]]:
    return [(Path(d), e) for d in cache_dirs for e in find_caches(d, every)]


def list_caches(cache_dirs: str | Path | Sequence[str | Path], out=sys.stdout) -> list[CacheEntry]:
    """Print one line per store (size on disk, state, kind, last use, folder, what made it) and a total."""
    dirs = [cache_dirs] if isinstance(cache_dirs, (str, Path)) else list(cache_dirs)
    found = _all(dirs)
    print(f"Stores under {', '.join(map(str, dirs))}:", file=out)
    if not found:
        print("  (none)", file=out)
        return []
    for root, e in found:
        why = f" ({e.reason})" if e.reason and e.state != State.COMPLETE.value else ""
        made = describe_made_by(e.made_by)
        print(
            f"  {_human(e.size_bytes):>9}  {e.state:<10}  {e.kind:<12}  last used "
            f"{_date(e.last_used)}  {e.path.relative_to(root)}{why}"
            + (f"  [{made}]" if made else ""),
            file=out,
        )
    total = sum(e.size_bytes for _, e in found)
    print(f"  {_human(total):>9}  total in {len(found)} item(s)", file=out)
    return [e for _, e in found]


def verify(
    cache_dirs: str | Path | Sequence[str | Path], out=sys.stdout, err=sys.stderr
) -> list[CacheEntry]:
    """Check every store (all recorded sizes and checksums); print one line each and an ``error:``
    line per corrupt store. Returns the corrupt ones."""
    dirs = [cache_dirs] if isinstance(cache_dirs, (str, Path)) else list(cache_dirs)
    bad = []
    checked = 0
    for _, e in _all(dirs, every=True):
        if e.leftover:
            continue
        checked += 1
        print(
            f"  {e.state:<10}  {e.kind:<12}  {e.path}" + (f"  ({e.reason})" if e.reason else ""),
            file=out,
        )
        if e.state == State.CORRUPT.value:
            bad.append(e)
            print(f"error: {e.kind} store {e.path} is corrupt: {e.reason}", file=err)
    print(
        f"Checked {checked} store(s): {len(bad)} corrupt"
        + ("; the next run that needs one rebuilds it (or prune removes it)" if bad else ""),
        file=out,
    )
    return bad


def prune(
    cache_dirs: str | Path | Sequence[str | Path],
    older_than_days: float | None,
    dry_run: bool = False,
    out=sys.stdout,
    leftovers_only: bool = False,
) -> list[CacheEntry]:
    """Remove stores unused for ``older_than_days`` (None: none), unreadable stores (corrupt, old format)
    and leftovers of interrupted builds (only those with ``leftovers_only``); never a store whose lock a
    process holds."""
    dirs = [cache_dirs] if isinstance(cache_dirs, (str, Path)) else list(cache_dirs)
    now = time.time()
    chosen = []
    for _, e in _all(dirs):
        if e.leftover:
            if not _build_in_progress(e.path):
                chosen.append((e, "leftover of an interrupted build"))
        elif leftovers_only or _locked(e.path):
            continue
        elif older_than_days is not None and e.age_days(now) > older_than_days:
            chosen.append((e, f"unused for {e.age_days(now):.0f} days"))
        elif e.state in (State.CORRUPT.value, State.OLD.value):
            chosen.append((e, f"{e.state}: {e.reason}"))
    verb = "would remove" if dry_run else "removed"
    for e, why in chosen:
        if not dry_run:
            if e.path.is_dir() and not e.path.is_symlink():
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                e.path.unlink(missing_ok=True)
            if not e.leftover:
                for lock in (Path(f"{e.path}.lock"), Path(f"{e.path}.fill.lock")):
                    lock.unlink(missing_ok=True)
        print(f"  {verb} {_human(e.size_bytes):>9}  {e.path}  ({why})", file=out)
    freed = sum(e.size_bytes for e, _ in chosen)
    print(
        f"{'Would free' if dry_run else 'Freed'} {_human(freed)} in {len(chosen)} item(s)", file=out
    )
    return [e for e, _ in chosen]


def default_cache_dirs() -> list[Path]:
    """``paths.cache_dir`` and ``paths.data_dir/synthetic`` of the composed config (``conf/local``
    included): ``data/cache`` and ``data/synthetic`` by default."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from histo_lightning.utils.resolvers import PROJECT_ROOT

    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train")
        return [Path(str(cfg.paths.cache_dir)), Path(str(cfg.paths.data_dir)) / "synthetic"]
    except Exception:  # the command must work even where the config does not compose
        return [PROJECT_ROOT / "data" / "cache", PROJECT_ROOT / "data" / "synthetic"]
    finally:
        GlobalHydra.instance().clear()


def main(argv: Sequence[str] | None = None) -> int:
    where = argparse.ArgumentParser(add_help=False)  # --cache-dir before or after the command
    where.add_argument(
        "--cache-dir",
        action="append",
        default=argparse.SUPPRESS,
        help="a folder of stores (repeatable; default: paths.cache_dir and paths.data_dir/synthetic)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m histo_lightning.caches",
        description="List, verify or prune the stores (caches and generated datasets).",
        parents=[where],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list",
        parents=[where],
        help="size on disk, state, kind, last use and origin of every store",
    )
    commands.add_parser(
        "verify", parents=[where], help="check every store's files; exit 1 naming each corrupt one"
    )
    pruning = commands.add_parser(
        "prune",
        parents=[where],
        help="remove stores unused for N days, unreadable stores and leftovers of interrupted builds",
    )
    group = pruning.add_mutually_exclusive_group(required=True)
    group.add_argument("--older-than", type=float, metavar="DAYS", help="unused for DAYS days")
    group.add_argument(
        "--leftovers-only", action="store_true", help="only leftovers of interrupted builds"
    )
    pruning.add_argument("--dry-run", action="store_true", help="list what would be removed")
    args = parser.parse_args(argv)
    chosen = getattr(args, "cache_dir", None)
    cache_dirs = [Path(d) for d in chosen] if chosen else default_cache_dirs()
    if args.command == "list":
        list_caches(cache_dirs)
        return 0
    if args.command == "verify":
        return 1 if verify(cache_dirs) else 0
    if args.older_than is not None and args.older_than < 0:
        parser.error("--older-than must be >= 0 days")
    prune(cache_dirs, args.older_than, dry_run=args.dry_run, leftovers_only=args.leftovers_only)
    return 0


__all__ = [
    "CACHE_INFO",
    "LAST_USED",
    "CacheEntry",
    "describe_made_by",
    "find_caches",
    "list_caches",
    "main",
    "prune",
    "touch_last_used",
    "verify",
]

if __name__ == "__main__":
    sys.exit(main())
