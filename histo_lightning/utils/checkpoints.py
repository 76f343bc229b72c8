"""Checkpoints we can trust: loaded without unpickling, written atomically.

A Lightning checkpoint is a pickle. ``torch.load(path, weights_only=False)`` runs whatever code the file
names while unpickling it, so a checkpoint from somewhere else (a download, a shared folder) can execute
arbitrary code. Every checkpoint histo-lightning reads is loaded by :func:`load_checkpoint`, i.e. with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers; a file that needs
more (a module's saved hyper-parameters holding a ``functools.partial``, an OmegaConf node, any class)
is refused with one line naming it. :func:`check_checkpoint` does the same check up front for
``ckpt_path=`` before Lightning opens the file, and Lightning is then told ``weights_only=True`` too.

Every checkpoint histo-lightning writes goes through :class:`AtomicCheckpointIO` (the trainers'
``plugins``): written to a temporary name beside the target, fsynced, then renamed, so a kill during a
save never leaves a truncated ``last.ckpt`` that the next resume would choke on.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from histo_lightning.errors import ConfigError
from histo_lightning.utils.io import atomic_path


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path`` loaded with ``torch.load(weights_only=True)`` onto the CPU.

    Args:
        path: the ``.ckpt`` (or ``.pt``) file.
        key: the config key that named the file, for the error message.

    Raises:
        ConfigError: the file does not exist, is not a PyTorch checkpoint, or needs pickle to load.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{key}={path} is a folder (expected a Lightning .ckpt file)")
    if not path.is_file():
        raise ConfigError(f"{key}={path} does not exist (expected a Lightning .ckpt file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if needs is None:
            raise ConfigError(
                f"{key}={path} is not a readable PyTorch checkpoint ({_reason(str(err))})"
            ) from None
        raise ConfigError(
            f"{key}={path} needs pickle to load (it holds a {needs.group(1)} object); checkpoints "
            "are loaded with torch.load(weights_only=True), which never runs code from the file. "
            "Re-save its state_dict with torch.save, or load it yourself if you trust it"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ConfigError(
            f"{key}={path} is not a readable PyTorch checkpoint ({_reason(str(err))})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            f"{key}={path} holds a {type(checkpoint).__name__}, expected a checkpoint dict"
        )
    return checkpoint


def check_checkpoint(path: str | Path, key: str = "ckpt_path") -> str:
    """Refuse ``path`` up front unless it is a Lightning checkpoint that loads without pickle."""
    checkpoint = load_checkpoint(path, key)
    if "state_dict" not in checkpoint:
        raise ConfigError(
            f"{key}={path} has no 'state_dict' (keys: {sorted(checkpoint)[:8]}); expected a Lightning "
            ".ckpt file"
        )
    return str(path)


def load_state_dict(path: str | Path, key: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint, loaded without pickle."""
    checkpoint = load_checkpoint(path, key)
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{key}={path} has no 'state_dict'; expected a Lightning .ckpt file")
    return checkpoint["state_dict"]


def _reason(text: str) -> str:
    """The informative line of a torch.load error (torch's own first lines are generic advice)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reason = next((line for line in lines if "Unsupported" in line), None)
    reason = reason or next((line for line in lines if "Weights only" not in line), None)
    return (reason or (lines[0] if lines else "unknown reason"))[:200].rstrip(".")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing atomically (temporary name, fsync, rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not take storage_options, got {storage_options!r}"
            )
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)


__all__ = ["AtomicCheckpointIO", "check_checkpoint", "load_checkpoint", "load_state_dict"]
