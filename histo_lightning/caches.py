"""Caches that never grow without bound: ``python -m histo_lightning.caches list|prune``.

Every cache folder under ``paths.cache_dir`` (``data/cache`` by default: decoded image caches, slide
patch indexes, feature caches, ...) describes itself in ``cache.json`` (CONTRACTS.md C4)::

    {"kind": "images" | "patch_index" | "features" | ..., "created": "<ISO time>",
     "made_by": {what produced it: dataset, files key, preprocessing, ...}, "format_version": <int>}

and its owner touches ``<folder>/.last_used`` every time it opens it (:func:`write_cache_info`,
:func:`touch_last_used`). The command finds them (a folder holding ``cache.json``; folders of an older
layout without it are listed as kind ``unknown``, dated by their own modification time) and
leftovers of interrupted builds: the ``.<name>.<random>.tmp`` folders and files that an atomic build
(:func:`histo_lightning.utils.io.atomic_dir`, ``atomic_path``) leaves when its process is killed.

    python -m histo_lightning.caches list [--cache-dir data/cache]
    python -m histo_lightning.caches prune --older-than 30 [--dry-run] [--cache-dir data/cache]
    python -m histo_lightning.caches prune --leftovers-only [--dry-run]

``prune`` removes the caches not used for ``--older-than`` days (by ``.last_used``) and every leftover
of an interrupted build (a leftover is only removed when no process holds the build's lock, or, without
a lock, when it is older than an hour: a build may be running). ``--dry-run`` lists what would go. A
removed cache is rebuilt by the next run that needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from histo_lightning.utils.io import write_json_atomic

CACHE_INFO = "cache.json"
LAST_USED = ".last_used"
LEFTOVER_MIN_AGE_S = 3600.0  # an unlocked temporary folder younger than this may be a running build


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_cache_info(
    folder: str | Path, kind: str, made_by: dict[str, Any], format_version: int
) -> Path:
    """Write ``<folder>/cache.json`` (C4) and mark the folder as used now."""
    folder = Path(folder)
    path = write_json_atomic(
        folder / CACHE_INFO,
        {
            "kind": kind,
            "created": now_iso(),
            "made_by": made_by,
            "format_version": int(format_version),
        },
    )
    touch_last_used(folder)
    return path


def touch_last_used(folder: str | Path) -> None:
    """Set ``<folder>/.last_used``'s modification time to now (the cache was opened)."""
    with contextlib.suppress(OSError):  # a read-only cache still works; it just looks unused
        (Path(folder) / LAST_USED).touch()


@dataclass
class CacheEntry:
    """A cache folder, or a leftover of an interrupted build."""

    path: Path
    kind: str
    size_bytes: int
    created: str
    last_used: float
    made_by: dict[str, Any]
    leftover: bool = False

    def age_days(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.last_used) / 86400.0


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(folder) / name).lstat().st_size
    return total


def _is_leftover(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.name != LAST_USED


def _entry(folder: Path) -> CacheEntry:
    info_file = folder / CACHE_INFO
    info: dict[str, Any] = {}
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text())
        except (OSError, json.JSONDecodeError):
            info = {"kind": "unreadable cache.json"}
    marker = folder / LAST_USED
    last_used = (marker if marker.exists() else folder).stat().st_mtime
    created = info.get("created") or datetime.fromtimestamp(
        folder.stat().st_mtime, timezone.utc
    ).isoformat(timespec="seconds")
    return CacheEntry(
        folder,
        str(info.get("kind", "unknown")),
        _size(folder),
        str(created),
        last_used,
        dict(info.get("made_by") or {}),
    )


def _looks_like_cache(folder: Path) -> bool:
    """An older cache folder without cache.json: an image cache (manifest.json + pixels)."""
    return (folder / "manifest.json").is_file() or (folder / "pixels.u8").is_file()


def find_caches(cache_dir: str | Path) -> Iterator[CacheEntry]:
    """Every cache folder and build leftover under ``cache_dir`` (not descending into caches)."""
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
                    _size(child),
                    datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    stat.st_mtime,
                    {},
                    leftover=True,
                )
            elif child.is_dir() and not child.is_symlink():
                if (child / CACHE_INFO).is_file() or _looks_like_cache(child):
                    yield _entry(child)
                else:
                    stack.append(child)


def _build_in_progress(leftover: Path) -> bool:
    """Whether a build may still be writing ``leftover`` (its lock is held, or it is recent)."""
    stem = leftover.name[1:].rsplit(".", 2)[0]  # ".<name>.<random>.tmp" -> "<name>"
    lock = leftover.parent / f"{stem}.lock"
    if lock.exists():
        try:
            with FileLock(str(lock), timeout=0):
                return False
        except Timeout:
            return True
    return time.time() - leftover.stat().st_mtime < LEFTOVER_MIN_AGE_S


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _describe(made_by: dict[str, Any], width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in made_by.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= width else text[: width - 1] + "…"


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M")


def list_caches(cache_dir: str | Path, out=sys.stdout) -> list[CacheEntry]:
    """Print one line per cache (size, kind, last used, created, what made it) and a total."""
    entries = list(find_caches(cache_dir))
    print(f"Caches under {cache_dir}:", file=out)
    if not entries:
        print("  (none)", file=out)
        return entries
    root = Path(cache_dir)
    for e in entries:
        print(
            f"  {_human(e.size_bytes):>9}  {e.kind:<12}  last used {_date(e.last_used)}  "
            f"created {e.created[:16].replace('T', ' ')}  {e.path.relative_to(root)}"
            + (f"  [{_describe(e.made_by)}]" if e.made_by else ""),
            file=out,
        )
    total = sum(e.size_bytes for e in entries)
    print(f"  {_human(total):>9}  total in {len(entries)} cache(s)", file=out)
    return entries


def prune(
    cache_dir: str | Path,
    older_than_days: float | None,
    dry_run: bool = False,
    out=sys.stdout,
) -> list[CacheEntry]:
    """Remove caches unused for ``older_than_days`` (None: none) and leftovers of interrupted builds."""
    now = time.time()
    chosen = []
    for e in find_caches(cache_dir):
        if e.leftover:
            if not _build_in_progress(e.path):
                chosen.append((e, "leftover of an interrupted build"))
        elif older_than_days is not None and e.age_days(now) > older_than_days:
            chosen.append((e, f"unused for {e.age_days(now):.0f} days"))
    verb = "would remove" if dry_run else "removed"
    for e, why in chosen:
        if not dry_run:
            if e.path.is_dir() and not e.path.is_symlink():
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                e.path.unlink(missing_ok=True)
            lock = e.path.with_name(e.path.name + ".lock")
            if not e.leftover and lock.is_file():
                lock.unlink(missing_ok=True)
        print(f"  {verb} {_human(e.size_bytes):>9}  {e.path}  ({why})", file=out)
    freed = sum(e.size_bytes for e, _ in chosen)
    print(
        f"{'Would free' if dry_run else 'Freed'} {_human(freed)} in {len(chosen)} item(s)", file=out
    )
    return [e for e, _ in chosen]


def default_cache_dir() -> Path:
    """``paths.cache_dir`` of the composed config (``conf/local`` included): ``data/cache`` by default."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from histo_lightning.utils.resolvers import PROJECT_ROOT

    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train")
        return Path(str(cfg.paths.cache_dir))
    except Exception:  # the command must work even where the config does not compose
        return PROJECT_ROOT / "data" / "cache"
    finally:
        GlobalHydra.instance().clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m histo_lightning.caches",
        description="List the caches under the cache folder, or remove stale ones.",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="the cache folder (default: paths.cache_dir, data/cache)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="size, kind, last use, creation and origin of every cache")
    pruning = commands.add_parser(
        "prune", help="remove caches unused for N days and leftovers of interrupted builds"
    )
    group = pruning.add_mutually_exclusive_group(required=True)
    group.add_argument("--older-than", type=float, metavar="DAYS", help="unused for DAYS days")
    group.add_argument(
        "--leftovers-only", action="store_true", help="only leftovers of interrupted builds"
    )
    pruning.add_argument("--dry-run", action="store_true", help="list what would be removed")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.command == "list":
        list_caches(cache_dir)
        return 0
    if args.older_than is not None and args.older_than < 0:
        parser.error("--older-than must be >= 0 days")
    prune(cache_dir, None if args.leftovers_only else args.older_than, dry_run=args.dry_run)
    return 0


__all__ = [
    "CACHE_INFO",
    "LAST_USED",
    "CacheEntry",
    "find_caches",
    "list_caches",
    "main",
    "prune",
    "touch_last_used",
    "write_cache_info",
]

if __name__ == "__main__":
    sys.exit(main())
