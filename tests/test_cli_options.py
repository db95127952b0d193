"""Options shared between commands are spelled and explained alike: the board's host-key trust and
the torch device of the training commands (``--train-device``; ``--device`` names a board)."""
from __future__ import annotations

import pytest
import typer

from edgeyolo.cli.app import app, main


def _option(flag: str, *path: str):
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    command = root
    for name in path:
        command = command.get_command(ctx, name)
    (option,) = [p for p in command.params if flag in p.opts]
    return option


def test_every_board_command_and_build_take_the_same_trust_option() -> None:
    expected = _option("--trust-new-host-key", "deploy")
    for path in (("build",), ("doctor",), ("device", "clean"), ("bench", "device"), ("bench", "deploy-throughput")):
        option = _option("--trust-new-host-key", *path)
        assert (option.opts, option.help, option.default, option.is_flag) == (
            expected.opts, expected.help, expected.default, expected.is_flag), path


def test_train_takes_train_device_and_keeps_device_as_the_same_option() -> None:
    option = _option("--train-device", "train")
    assert option.opts == ["--train-device", "--device"] and option.default == "cpu"
    assert _option("--train-device", "build").default == "cpu"
    assert _option("--device", "build").help.startswith("Inventory name of a board")


def test_both_spellings_reach_the_trainer(monkeypatch, tmp_path) -> None:
    import edgeyolo.train.trainer as trainer

    seen: list[str] = []

    class Stop(Exception):
        pass

    def fake_init(self, config, progress=None, on_epoch=None):
        seen.append(config.device)
        raise Stop

    monkeypatch.setattr(trainer.Trainer, "__init__", fake_init)
    data = tmp_path / "d.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    for flag in ("--train-device", "--device"):
        with pytest.raises(Stop):  # the config reached the trainer: nothing runs
            main(["train", "--data", str(data), "--cfg", "edgeyolo-res", flag, "cuda:3", "--epochs", "1"])
    assert seen == ["cuda:3", "cuda:3"]
