"""Batch-norm folding: ``W' = W·γ/√(σ²+ε)``, ``b' = β + (b − μ)·γ/√(σ²+ε)``.

Used three ways: by the quantized conv (weights are quantized *after* folding, as TensorRT and the
DPU see them), by the QDQ exporter, and to write a BN-free float model for export. Folding is done
in float64 and rounded once to float32, so a folded model stays within ~1e-6 of the original.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from edgeyolo.model.darknet import ConvBlock, Darknet


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


def fold_bn(model: Darknet) -> Darknet:
    """A copy of a float model with every BN folded into its conv (a conv with bias, ``bn = None``).

    The copy computes the same function in eval mode; its cfg still says ``batch_normalize=1``, so it
    is for export and inference, not for writing darknet weights or further training.
    """
    from edgeyolo.compress.quant.modules import is_quantized
    from edgeyolo.errors import UsageError

    if is_quantized(model):
        raise UsageError("fold_bn takes a float model; a quantized model folds BN inside its quantized convs")
    folded = copy.deepcopy(model).eval()
    for _, block in folded.conv_blocks():
        if block.bn is None:
            continue
        w, b = folded_block_params(block)
        old = block.conv
        conv = nn.Conv2d(
            old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
            dilation=old.dilation, groups=old.groups, bias=True,
        ).to(old.weight.device)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        block.conv, block.bn = conv, None
    return folded
