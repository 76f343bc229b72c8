"""A W&B logger that goes offline by itself when there is no account or no network.

``logger=wandb`` builds it. ``mode=auto`` (the default) logs online only when an API key is configured
(``WANDB_API_KEY`` or ``wandb login``'s netrc entry) *and* the W&B host answers within a second; otherwise
it logs offline into the run directory and says so in one line. The network is never touched without a key.
``WANDB_MODE``, W&B's own switch, wins when set. A resumed run continues the same W&B run.
"""

from __future__ import annotations

import netrc
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger

from histo_lightning.errors import ConfigError
from histo_lightning.utils.io import write_text_atomic
from histo_lightning.utils.logging import get_logger

log = get_logger(__name__)


def _api_host() -> str:
    return (
        urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        or "api.wandb.ai"
    )


def has_api_key() -> bool:
    """True when W&B has credentials: ``WANDB_API_KEY`` or a netrc entry for the API host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(_api_host()) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def host_reachable(host: str, port: int = 443, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: str) -> tuple[str, str]:
    """``(online|offline|disabled, reason)`` for the configured ``mode`` (auto, online, offline, disabled)."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode={mode!r}: expected auto, online, offline or disabled")
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        return ("offline" if env_mode == "dryrun" else env_mode), f"WANDB_MODE={env_mode}"
    if mode != "auto":
        return mode, f"logger.wandb.mode={mode}"
    if not has_api_key():
        return "offline", "no W&B API key"
    if not host_reachable(_api_host()):
        return "offline", f"{_api_host()} unreachable"
    return "online", "API key found and host reachable"


def _run_id(save_dir: Path) -> str:
    """The W&B run id of this run directory, so that a resumed run logs into the same W&B run."""
    id_file = save_dir / "wandb_run_id.txt"
    if id_file.exists():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    write_text_atomic(id_file, run_id + "\n")
    return run_id


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str = "auto",
    entity: str | None = None,
    job_type: str = "train",
    log_model: bool = False,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` writing under ``save_dir/wandb``; offline when W&B cannot be reached."""
    resolved, reason = resolve_mode(mode)
    save_path = Path(save_dir)
    if resolved == "offline":
        log.info(
            f"W&B: offline ({reason}); run saved under {save_path / 'wandb'}, upload later with `wandb sync`"
        )
    return WandbLogger(
        project=project,
        name=name,
        group=group,
        tags=list(tags),
        save_dir=str(save_path),
        entity=entity,
        job_type=job_type,
        log_model=log_model and resolved == "online",
        mode=resolved,  # passed to wandb.init; Lightning's offline=True would set WANDB_MODE process-wide
        id=_run_id(save_path),
    )
