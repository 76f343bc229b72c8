"""The team's shared folder (``../shared``: paper texts, dataset notes, published splits), for tests only.

The package never reads it (its data ships in :mod:`histo_lightning.resources`). A test that compares the
package's data with the shared originals uses :data:`SHARED_DIR` and skips, saying why, where a clone has
no shared folder beside it (:data:`requires_shared`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_dir(project_root: Path = PROJECT_ROOT) -> Path:
    """``<project_root>/../shared``, or the one beside the main checkout of a git worktree."""
    beside = project_root.parent / "shared"
    if beside.is_dir():
        return beside
    git = project_root / ".git"
    if git.is_file():  # a worktree: ".git" holds "gitdir: <main>/.git/worktrees/<name>"
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = Path(text.split(":", 1)[1].strip())
            common = gitdir / "commondir"
            main_git = (gitdir / common.read_text().strip()).resolve() if common.is_file() else None
            if main_git is not None and (main_git.parent.parent / "shared").is_dir():
                return main_git.parent.parent / "shared"
    return beside


SHARED_DIR = shared_dir()

#: skips a test that compares against the shared folder where a clone has none beside it
requires_shared = pytest.mark.skipif(
    not SHARED_DIR.is_dir(),
    reason=f"no shared folder beside the repository ({SHARED_DIR}): a lone clone has only the package's "
    "own copies, which the other tests use",
)
