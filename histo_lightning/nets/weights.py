"""Loading a backbone's weights from a local file (no network), shared by every net that takes one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from histo_lightning.errors import ConfigError
from histo_lightning.stores.keys import digest_bytes


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``torch.save``'d state dict (never unpickled objects).

    ``key`` names the config key the path came from, for the error message. A checkpoint holding the state
    dict under ``state_dict`` or ``model`` (as many published foundation-model files do) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r} does not exist (expected a state dict file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle-only payloads, truncated files
        raise ConfigError(
            f"{key}={str(path)!r} cannot be read as plain tensors ({type(err).__name__}); "
            "expected a state dict saved with torch.save(model.state_dict()) or a .safetensors file"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"{key}={str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_matching_weights(module: nn.Module, path: str | Path, key: str) -> None:
    """Load the tensors of ``path`` whose names ``module`` has; refuse a file of another architecture.

    Keys the module lacks (a classifier head) are ignored; more than half of the module's tensors missing,
    or a shape mismatch, means the file is for another network and is refused naming ``key``.
    """
    state = read_state_dict(path, key)
    own = module.state_dict()
    matching = {k: v for k, v in state.items() if k in own}
    wrong_shape = [k for k, v in matching.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong_shape:
        k = wrong_shape[0]
        raise ConfigError(
            f"{key}={str(path)!r}: tensor {k} has shape {tuple(state[k].shape)}, the network expects "
            f"{tuple(own[k].shape)}; is it a state dict of the same architecture?"
        )
    if not matching or len(own) - len(matching) > 0.5 * len(own):
        raise ConfigError(
            f"{key}={str(path)!r}: only {len(matching)} of {len(own)} tensors found; "
            "is it a state dict of the same architecture?"
        )
    module.load_state_dict(matching, strict=False)


def state_dict_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, dtypes and bytes), in name order."""

    def chunks() -> Iterator[bytes]:
        for name, tensor in sorted(module.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            yield f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode()
            yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes()

    return digest_bytes(chunks(), length=None)


__all__ = ["load_matching_weights", "read_state_dict", "state_dict_digest"]
