"""When W&B logs online or offline: decided without touching the network unless there is a key."""

from __future__ import annotations

import pytest

from histo_lightning.errors import ConfigError
from histo_lightning.utils import wandb as wb


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    probed: list[str] = []

    def unreachable(host: str, port: int = 443, timeout: float = 1.0) -> bool:
        probed.append(host)
        return False

    monkeypatch.setattr(wb, "host_reachable", unreachable)
    return probed


def test_no_key_is_offline_without_probing(no_network: list[str]) -> None:
    assert wb.resolve_mode("auto") == ("offline", "no W&B API key")
    assert no_network == []


def test_key_but_no_network_is_offline(
    no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    mode, reason = wb.resolve_mode("auto")
    assert mode == "offline" and "unreachable" in reason and no_network == ["api.wandb.ai"]


def test_netrc_key_counts(no_network: list[str], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wb.has_api_key()


def test_explicit_modes_win(no_network: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert wb.resolve_mode("disabled")[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wb.resolve_mode("online") == ("offline", "WANDB_MODE=offline")
    with pytest.raises(ConfigError, match=r"logger\.wandb\.mode"):
        monkeypatch.delenv("WANDB_MODE")
        wb.resolve_mode("sometimes")
