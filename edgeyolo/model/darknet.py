"""The PyTorch model built from a darknet cfg.

Numerics follow darknet exactly where it matters for matching OpenCV DNN and the board runtimes:
BN epsilon 1e-6, LeakyReLU slope 0.1, darknet's max-pool padding (left = padding // 2, the rest on the
right/bottom), route groups, and the v3/v4 ``[yolo]`` decode (``scale_x_y``). Every op used exports to
ONNX opset 11–17 with the TorchScript exporter (no Mish/Pad-with-inf ops that old TensorRT parsers
reject).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeyolo.model.cfg import (
    AvgPoolSpec,
    Cfg,
    ConvSpec,
    DropoutSpec,
    MaxPoolSpec,
    RouteSpec,
    ScaleChannelsSpec,
    ShortcutSpec,
    UpsampleSpec,
    YoloSpec,
    check_model_size,
    infer_shapes,
    maxpool_geometry,
)

BN_EPS = 1e-6  # darknet's; torch's default 1e-5 is off by ~7x more versus OpenCV (measured)
BN_MOMENTUM = 0.03


class Mish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        # spelled out: opset < 18 has no Mish op, and Softplus/Tanh are what TensorRT 8 parses
        return x * torch.tanh(F.softplus(x))


class Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def make_activation(name: str) -> nn.Module:
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name == "relu":
        return nn.ReLU()
    if name == "mish":
        return Mish()
    if name == "swish":
        return Swish()
    if name == "logistic":
        return nn.Sigmoid()
    if name == "linear":
        return nn.Identity()
    raise ValueError(name)  # parse_cfg already validated it


class ConvBlock(nn.Module):
    def __init__(self, spec: ConvSpec, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            spec.filters,
            spec.size,
            spec.stride,
            spec.padding,
            groups=spec.groups,
            bias=not spec.batch_normalize,
        )
        self.bn = nn.BatchNorm2d(spec.filters, eps=BN_EPS, momentum=BN_MOMENTUM) if spec.batch_normalize else None
        self.act = make_activation(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPool(nn.Module):
    """Darknet max-pool: ``out = (in + padding - size) // stride + 1``, ``padding // 2`` on the left/top.

    Exact for every geometry, expressed with MaxPool padding + slicing where possible so the ONNX
    graph has no Pad op (TensorRT 8.2 only pads with constants).
    """

    def __init__(self, spec: MaxPoolSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: Tensor) -> Tensor:
        spec = self.spec
        h, w = int(x.shape[-2]), int(x.shape[-1])
        out_h, out_w, left, _ = maxpool_geometry(spec, h, w)
        k, s = spec.size, spec.stride
        # right/bottom padding needed so that the last window fits
        right_h = max(0, (out_h - 1) * s + k - h - left)
        right_w = max(0, (out_w - 1) * s + k - w - left)
        p = max(left, right_h, right_w)
        if p == 0:
            return F.max_pool2d(x, k, s)[..., :out_h, :out_w]
        if p <= k // 2 and (p - left) % s == 0:
            off = (p - left) // s
            y = F.max_pool2d(x, k, s, padding=p)
            return y[..., off : off + out_h, off : off + out_w]
        y = F.pad(x, (left, right_w, left, right_h), value=float("-inf"))
        return F.max_pool2d(y, k, s)[..., :out_h, :out_w]


class Upsample(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=float(self.stride), mode="nearest")


class Placeholder(nn.Module):
    """Route, shortcut, scale_channels and yolo are wired in Darknet.forward; this keeps indices aligned."""

    def __init__(self, spec):
        super().__init__()
        self.kind = spec.section

    def extra_repr(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Head:
    """What decoding one ``[yolo]`` layer needs; stride comes from the cfg's shapes, not an assumed order."""

    layer: int
    anchors: tuple[tuple[float, float], ...]
    classes: int
    scale_x_y: float
    stride: int


def decode(raw: Tensor, head: Head, img_h: int, img_w: int) -> Tensor:
    """Raw head output [B, A(5+C), H, W] -> [B, H*W*A... ordered (anchor, y, x), 5+C] in input pixels."""
    b, _, h, w = raw.shape
    a = len(head.anchors)
    p = raw.view(b, a, head.classes + 5, h, w).permute(0, 1, 3, 4, 2)
    ys = torch.arange(h, dtype=raw.dtype, device=raw.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=raw.dtype, device=raw.device).view(1, 1, 1, w)
    anchors = torch.tensor(head.anchors, dtype=raw.dtype, device=raw.device).view(1, a, 1, 1, 2)
    sxy = head.scale_x_y
    xy = torch.sigmoid(p[..., 0:2]) * sxy - 0.5 * (sxy - 1.0)
    cx = (xy[..., 0] + xs) * (img_w / w)
    cy = (xy[..., 1] + ys) * (img_h / h)
    wh = torch.exp(p[..., 2:4]) * anchors
    rest = torch.sigmoid(p[..., 4:])
    out = torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), wh, rest], dim=-1)
    return out.reshape(b, -1, head.classes + 5)


class Darknet(nn.Module):
    """A darknet cfg as an nn.Module. ``module_list[i]`` is darknet layer ``i``."""

    def __init__(self, cfg: Cfg):
        super().__init__()
        self.cfg = cfg
        shapes = infer_shapes(cfg)
        check_model_size(cfg, shapes)  # a cfg built in code (with_classes, pruning) gets the parser's bounds too
        in_channels = cfg.net.channels
        modules: list[nn.Module] = []
        for layer in cfg.layers:
            if isinstance(layer, ConvSpec):
                modules.append(ConvBlock(layer, in_channels))
            elif isinstance(layer, MaxPoolSpec):
                modules.append(MaxPool(layer))
            elif isinstance(layer, UpsampleSpec):
                modules.append(Upsample(layer.stride))
            elif isinstance(layer, AvgPoolSpec):
                modules.append(nn.AdaptiveAvgPool2d(1))
            elif isinstance(layer, DropoutSpec):
                modules.append(nn.Dropout(layer.probability))
            else:
                modules.append(Placeholder(layer))
            in_channels = shapes[layer.index][0]
        self.module_list = nn.ModuleList(modules)
        # outputs that a later route/shortcut/scale_channels reads: keep only those
        keep: set[int] = set()
        for layer in cfg.layers:
            if isinstance(layer, RouteSpec):
                keep.update(layer.layers)
            elif isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
                keep.add(layer.source)
        self._keep = frozenset(keep)
        self.heads = tuple(
            Head(y.index, y.masked_anchors, y.classes, y.scale_x_y, cfg.net.height // shapes[y.index][1])
            for y in cfg.yolo_layers
        )

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def run(self, x: Tensor, capture: frozenset[int] | set[int] = frozenset()) -> tuple[list[Tensor], dict[int, Tensor]]:
        """Raw head outputs in cfg order, plus the outputs of the layers named in ``capture``."""
        outputs: dict[int, Tensor] = {}
        heads: list[Tensor] = []
        captured: dict[int, Tensor] = {}
        for layer, module in zip(self.cfg.layers, self.module_list):
            if isinstance(layer, RouteSpec):
                parts = [outputs[i] for i in layer.layers]
                if layer.groups > 1:
                    parts = [p.chunk(layer.groups, dim=1)[layer.group_id] for p in parts]
                x = self._route(module, parts)
            elif isinstance(layer, ShortcutSpec):
                x = self._shortcut(module, x, outputs[layer.source])
                if layer.activation != "linear":
                    x = make_activation(layer.activation)(x)
            elif isinstance(layer, ScaleChannelsSpec):
                x = outputs[layer.source] * x
                if layer.activation != "linear":
                    x = make_activation(layer.activation)(x)
            elif isinstance(layer, YoloSpec):
                heads.append(x)
            else:
                x = module(x)
            if layer.index in self._keep:
                outputs[layer.index] = x
            if layer.index in capture:
                captured[layer.index] = x
        return heads, captured

    def _route(self, module: nn.Module, parts: list[Tensor]) -> Tensor:
        """A ``[route]``'s concat (a hook, like :meth:`_shortcut`: verification reaches its output)."""
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _shortcut(self, module: nn.Module, x: Tensor, source: Tensor) -> Tensor:
        """A ``[shortcut]``'s add (a hook: quantized models quantize both inputs first)."""
        return x + source

    def forward_raw(self, x: Tensor) -> list[Tensor]:
        return self.run(x)[0]

    def decode(self, raw: list[Tensor], img_h: int, img_w: int) -> Tensor:
        return torch.cat([decode(r, h, img_h, img_w) for r, h in zip(raw, self.heads)], dim=1)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Training: raw heads. Inference: [B, N, 5+C] = (cx, cy, w, h) in input pixels, obj, class probs."""
        raw = self.forward_raw(x)
        if self.training:
            return raw
        return self.decode(raw, int(x.shape[-2]), int(x.shape[-1]))

    def parameter_count(self) -> int:
        """Learned parameters (conv weights and biases, BN scales and shifts), as every report counts them."""
        return sum(p.numel() for p in self.parameters())

    def conv_blocks(self) -> list[tuple[int, ConvBlock]]:
        return [(i, m) for i, m in enumerate(self.module_list) if isinstance(m, ConvBlock)]


class RawHeads(nn.Module):
    """Wrapper whose forward returns the raw head tensors (one per [yolo], cfg order); for export."""

    def __init__(self, model: Darknet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.forward_raw(x))


def build_model(cfg: Cfg) -> Darknet:
    return Darknet(cfg)
