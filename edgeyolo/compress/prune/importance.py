"""Channel importance: the score by which channel selection ranks a conv's output channels.

``gamma`` is Network Slimming's |γ| of the BN after the conv (Liu et al. 2017), the criterion every
reference method uses: after sparse training the unimportant γ sit near zero, so the channel is a
constant ``act(β)`` that graph surgery can fold into its consumers. ``l1`` scores a filter by its
L1 norm relative to the mean of its layer (EagleEye ranks by the norm within one layer only; raw
norms scale with each layer's fan-in, so one global threshold would empty the layers with the
smallest weights first). Both give one tensor per conv layer.
"""
from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

import torch
from torch import Tensor

from edgeyolo.errors import UsageError
from edgeyolo.model.darknet import ConvBlock, Darknet


class Importance(str, Enum):
    GAMMA = "gamma"
    L1 = "l1"  # filter L1 norm / the layer's mean filter norm

    @classmethod
    def parse(cls, value: str | Importance) -> Importance:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise UsageError(f"unknown channel importance {value!r}; expected one of {known}") from None


def _block(model: Darknet, index: int) -> ConvBlock:
    block = model.module_list[index]
    if not isinstance(block, ConvBlock) or block.bn is None:
        raise UsageError(f"layer {index} is not a convolutional layer with batch norm; only those can be ranked")
    return block


@torch.no_grad()
def channel_scores(model: Darknet, layers: Iterable[int], importance: Importance = Importance.GAMMA) -> dict[int, Tensor]:
    """Score of every output channel of each listed conv (float64, higher = more important)."""
    scores: dict[int, Tensor] = {}
    for index in layers:
        block = _block(model, index)
        if importance is Importance.GAMMA:
            score = block.bn.weight.detach().abs()
        else:
            norm = block.conv.weight.detach().abs().flatten(1).sum(dim=1)
            score = norm / norm.mean().clamp_min(torch.finfo(norm.dtype).tiny)
        scores[int(index)] = score.double().cpu()
    return scores
