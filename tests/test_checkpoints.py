"""Checkpoints load without unpickling (one line when they cannot) and are written atomically."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from histo_lightning.errors import ConfigError
from histo_lightning.utils.checkpoints import (
    AtomicCheckpointIO,
    check_checkpoint,
    load_checkpoint,
    load_state_dict,
)


def test_a_plain_checkpoint_loads(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"lr": 0.1}}, path)
    assert check_checkpoint(path) == str(path)
    assert torch.equal(load_state_dict(path)["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"garbage", "is not a readable PyTorch checkpoint"),
        ({"state_dict": {}, "opt": functools.partial(print)}, "needs pickle to load"),
        ([1, 2, 3], "holds a list, expected a checkpoint dict"),
        ({"weights": torch.ones(1)}, "has no 'state_dict'"),
        ("folder", "is a folder (expected a Lightning .ckpt file)"),
    ],
    ids=["missing", "garbage", "pickle", "not_a_dict", "no_state_dict", "folder"],
)
def test_bad_checkpoints_are_one_line_naming_the_file(tmp_path: Path, content, message) -> None:
    path = tmp_path / "bad.ckpt"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError) as caught:
        check_checkpoint(path, key="ckpt_path")
    text = str(caught.value)
    assert text.startswith(f"ckpt_path={path}") and message in text and "\n" not in text
    if message == "needs pickle to load":
        assert "functools.partial" in text


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert load_checkpoint(path)["state_dict"]["w"].shape == (3,)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    # a save that dies half-way leaves the previous checkpoint intact
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
