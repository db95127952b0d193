"""Batch-norm folding: ``W' = W·γ/√(σ²+ε)``, ``b' = β + (b − μ)·γ/√(σ²+ε)``.

Used three ways: by the quantized conv (weights are quantized *after* folding, as TensorRT and the
DPU see them), by the QDQ exporter, and to write a BN-free float model for export (``modules.fold_bn``, which
refuses a quantized model). Folding is done
in float64 and rounded once to float32, so a folded model stays within ~1e-6 of the original.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeyolo.model.darknet import ConvBlock


def fold_bn_params(
    weight: Tensor,
    bias: Tensor | None,
    bn: nn.BatchNorm2d,
    mean: Tensor | None = None,
    var: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Folded (weight, bias). ``mean``/``var`` default to the running statistics; pass the batch
    statistics for BN-folded QAT. Differentiable in every input."""
    mean = bn.running_mean if mean is None else mean
    var = bn.running_var if var is None else var
    gain = bn.weight / torch.sqrt(var + bn.eps)
    b0 = bias if bias is not None else torch.zeros_like(mean)
    return weight * gain.view(-1, 1, 1, 1), bn.bias + (b0 - mean) * gain


@torch.no_grad()
def folded_block_params(block: ConvBlock) -> tuple[Tensor, Tensor]:
    """A conv block's folded parameters in float64 arithmetic, returned as float32."""
    conv, bn = block.conv, block.bn
    bias = conv.bias.double() if conv.bias is not None else None
    if bn is None:
        return conv.weight.detach().clone(), (bias if bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)).float()
    gain = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b0 = bias if bias is not None else torch.zeros_like(gain)
    w = conv.weight.double() * gain.view(-1, 1, 1, 1)
    b = bn.bias.double() + (b0 - bn.running_mean.double()) * gain
    return w.float(), b.float()
