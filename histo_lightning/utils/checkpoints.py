"""Loading checkpoints safely: plain tensors and containers only (``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from histo_lightning.errors import ConfigError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read without unpickling arbitrary objects; one line when it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist (expected a Lightning .ckpt file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"ckpt_path={path} cannot be loaded as plain tensors ({type(err).__name__}); checkpoints "
            "that need pickle are refused (they can run code); re-save its state_dict"
        ) from None


__all__ = ["load_checkpoint"]
