"""Shared by the resume tests: one run straight through, and the same run stopped after its first
epoch was checkpointed and then resumed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from edgeyolo.train.trainer import TrainConfig, Trainer


class _Stop(Exception):
    pass


def _stop(record) -> None:
    raise _Stop


def straight_and_resumed(config: TrainConfig) -> tuple[dict, dict, Trainer]:
    """Train ``config`` as ``straight``, then as ``cut`` stopped after epoch 0 was checkpointed and
    resumed to the end; returns both final states and the resumed trainer."""
    Trainer(dataclasses.replace(config, name="straight")).fit()
    with pytest.raises(_Stop):  # killed after epoch 0 was checkpointed
        Trainer(dataclasses.replace(config, name="cut"), on_epoch=_stop).fit()
    resumed = Trainer.resume(Path(config.out) / "cut")
    resumed.fit()
    states = (torch.load(Path(config.out) / name / "state.pt", weights_only=True) for name in ("straight", "cut"))
    return (*states, resumed)


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
