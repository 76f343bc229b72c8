"""Whether an encoder's weights are available on this machine, decided in milliseconds and offline.

Used by pre-flight checks (``pipeline.preflight``) that run before torch or timm is imported, so a run
that would need weights it cannot get stops within seconds (instead of after the hub's retries) with one
line naming the ways out. ``encoder.weights`` means (:func:`histo_lightning.nets.encoders.build_encoder`):

* ``random``: drawn here, always available;
* ``timm``: timm's pretrained weights, which timm fetches from the Hugging Face hub
  (``timm/<model>.<tag>``) into the hub cache; available when that cache holds a snapshot of them
  (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``) — nothing is downloaded or asked
  over the network here;
* anything else: a local state-dict file, available when it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def timm_weights_cached(name: str, cache: Path | None = None) -> bool:
    """Whether the hub cache holds a weights file of timm's ``name`` (``arch.tag``; without a tag, any
    tag of the architecture)."""
    cache = hf_hub_cache() if cache is None else cache
    if not cache.is_dir():
        return False
    repo = f"models--timm--{name}"
    folders = [cache / repo] if "." in name else [*sorted(cache.glob(f"{repo}.*")), cache / repo]
    for folder in folders:
        for snapshot in sorted((folder / "snapshots").glob("*")):
            if any((snapshot / f).is_file() for f in WEIGHT_FILES):
                return True
    return False


def weights_problem(name: str, weights: str) -> str | None:
    """Why the ``weights`` of encoder ``name`` are not available offline, or None when they are."""
    weights = str(weights)
    if weights == "random":
        return None
    if weights == "timm":
        if timm_weights_cached(name):
            return None
        return (
            f"timm's pretrained weights of {name} are not in the Hugging Face hub cache "
            f"({hf_hub_cache()}) and cannot be downloaded without network"
        )
    if weights in ("???", "None", ""):
        return "no weights file was given"
    if not Path(weights).expanduser().is_file():
        return f"{weights} is not a file"
    return None


__all__ = ["hf_hub_cache", "timm_weights_cached", "weights_problem"]
