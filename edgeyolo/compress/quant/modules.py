"""Quantized modules and the in-place conversion of a :class:`Darknet` (``prepare_qat``).

Where activations are quantized (one placement for QAT, PTQ, the analysis and the QDQ export):

* the **input of every conv** (``module_list[i].in_q``), including the image at layer 0. Max-pool,
  nearest upsample and route/concat between a conv and its consumer commute with per-tensor
  quantization, so quantizing at the consumer is what TensorRT fuses into an int8 conv, and a
  concat is always quantized with one scale;
* **both inputs of every residual add** (``module_list[i].qa`` / ``qb``), TensorRT's rule for an int8
  add; with ``equal_scales`` (the DPU's rule) both share ``qa``.

Head outputs and the yolo decode stay float. Weights are quantized after BN folding (``W·γ/σ``),
per output channel or per tensor as the scheme says (``affine``: per channel, ``pow2``: per tensor);
the bias stays float (TensorRT and onnxruntime add it in higher precision). A layer marked float
(``quantized = False``) runs the original float block exactly. What differs per scheme (scales,
rounding, code range, the image and residual-add quantizers, range tracking, the LeakyReLU slope)
is asked of the spec's :class:`~edgeyolo.compress.quant.schemes.QuantScheme`.

``prepare_qat`` swaps modules in place and re-classes the model as :class:`QuantDarknet` (a
``Darknet`` whose ``run`` also feeds residual adds through their quantizers), so every caller of
``forward``/``forward_raw``/``decode``/``run`` keeps working on the same object.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeyolo.compress.quant.bnfold import fold_bn_params, folded_block_params
from edgeyolo.compress.quant.fakequant import qrange, quantize
from edgeyolo.compress.quant.spec import QuantSpec
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import ConvSpec, ShortcutSpec
from edgeyolo.model.darknet import ConvBlock, Darknet

EMA_MOMENTUM = 0.1  # activation range tracking during QAT (the reference's AveragedRangeTracker)
BN_FOLD_MOMENTUM = 0.01  # running statistics under BN-folded QAT (the reference: ~+1 % mAP vs 0.1)


class Observer(Protocol):
    def update(self, x: Tensor) -> None: ...


class ActQuantizer(nn.Module):
    """Per-tensor symmetric activation quantizer with a range ``amax`` (a buffer, saved with the model).

    Training mode tracks ``amax`` as an EMA of batch max|x| (unless frozen); eval mode uses it as is.
    While an observer is attached (calibration) it only observes and passes ``x`` through.
    """

    def __init__(self, spec: QuantSpec, role: str = "act"):
        super().__init__()
        self.scheme, self.bits = spec.scheme, spec.a_bit  # the recorded scheme name, for the repr
        self.scheme_obj = scheme = spec.scheme_obj
        self.qmin, self.qmax = qrange(spec.a_bit, scheme.narrow)
        self.rounding = scheme.rounding(role)
        self.role = role
        self.register_buffer("amax", torch.zeros(()))
        self.enabled = scheme.quantize_input or role != "input"
        self.frozen = False
        self.export = False
        self._export_scale: Tensor | None = None  # set by export_mode: a constant, not traced arithmetic
        self.observer: Observer | None = None
        self.capture: list[Tensor] | None = None
        self.force: list[Tensor] | None = None

    def extra_repr(self) -> str:
        return f"{self.scheme}, bits={self.bits}, range={self.qmin}..{self.qmax}, rounding={self.rounding}, amax={float(self.amax):.4g}"

    def scale(self) -> Tensor:
        return self.scheme_obj.act_scale(self.amax, self.bits)

    def observe(self, *xs: Tensor) -> bool:
        """Feed the range statistics; True when the tensors must pass through unquantized."""
        if self.observer is not None:
            for x in xs:
                self.observer.update(x.detach())
            return True
        if not self.enabled:
            return True
        if self.training and not self.frozen and self.scheme_obj.uses_ranges:
            with torch.no_grad():
                batch = torch.stack([x.detach().abs().max() for x in xs]).max().to(self.amax)
                if float(self.amax) > 0:
                    self.amax.mul_(1 - EMA_MOMENTUM).add_(batch * EMA_MOMENTUM)
                else:
                    self.amax.copy_(batch)
        return False

    def apply(self, x: Tensor) -> Tensor:
        if not self.scheme_obj.uses_ranges:
            return self.scheme_obj.fake_act(x, self.bits)
        amax = float(self.amax)  # one host read per call (a device sync on CUDA)
        if not math.isfinite(amax):
            # the activations diverged (NaN/inf): pass that on, so the training loop stops with its own
            # divergence message and keeps the last good checkpoint
            return x * float("nan")
        if not amax > 0:
            raise UsageError(
                "an activation quantizer has no range yet: calibrate() the model, or run QAT in training mode first"
            )
        s = self.scale() if self._export_scale is None else self._export_scale
        if self.export:  # ONNX QuantizeLinear/DequantizeLinear; ONNX has no narrow range, so int8 = -128..127
            zero = torch.zeros(1, dtype=torch.int32)
            return torch.fake_quantize_per_tensor_affine(x, s.reshape(1), zero, -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1)
        q = self.codes(x, s)
        return q * s

    def codes(self, x: Tensor, s: Tensor) -> Tensor:
        """The integer codes (as float) of ``x`` at scale ``s``, recorded or replaced (capture_codes)."""
        q = quantize(x, s, self.qmin, self.qmax, self.rounding)
        if self.capture is not None:
            self.capture.append(q.detach().to(torch.int32))
        if self.force:  # teacher forcing: continue from another runtime's codes (see capture_codes)
            q = self.force.pop(0).to(q)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return x if self.observe(x) else self.apply(x)


class WeightQuantizer(nn.Module):
    """Symmetric weight quantizer; the range is the current max|w| (per output channel where the scheme says)."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.scheme, self.bits = spec.scheme, spec.w_bit  # the recorded scheme name, for the repr
        self.scheme_obj = scheme = spec.scheme_obj
        self.qmin, self.qmax = qrange(spec.w_bit, scheme.narrow)
        self.rounding = scheme.rounding("weight")
        self.export = False

    def extra_repr(self) -> str:
        return f"{self.scheme}, bits={self.bits}, range={self.qmin}..{self.qmax}, rounding={self.rounding}"

    def scale(self, w: Tensor) -> Tensor:
        return self.scheme_obj.weight_scale(w, self.bits)

    def forward(self, w: Tensor) -> Tensor:
        if not self.scheme_obj.uses_ranges:
            return self.scheme_obj.fake_weight(w, self.bits)
        if self.export:
            # the tracer would constant-fold weight Q/DQ into dequantized floats; the QDQ exporter
            # inserts the weight QuantizeLinear/DequantizeLinear itself, on the float weights
            return w
        s = self.scale(w)
        return quantize(w, s, self.qmin, self.qmax, self.rounding) * s


class QuantConvBlock(ConvBlock):
    """A :class:`ConvBlock` (same ``conv``/``bn``/``act`` submodules and state-dict keys) whose input
    and BN-folded weights are fake-quantized.

    BN statistics: with ``bn_fold`` and in training (until :func:`freeze_bn` is called) the batch
    statistics of a float conv are folded and the running ones updated with momentum 0.01 (the
    reference's BN-folded QAT); otherwise the running statistics are folded (BN frozen, γ/β train).
    """

    def __init__(self, block: ConvBlock, spec: QuantSpec, role: str = "act"):
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = block.conv, block.bn, block.act
        slope = spec.scheme_obj.leaky_slope
        if slope is not None and isinstance(self.act, nn.LeakyReLU):
            self.act = nn.LeakyReLU(slope)
        self.in_q = ActQuantizer(spec, role)
        self.w_q = WeightQuantizer(spec)
        self.bn_fold = spec.bn_fold
        self.bn_frozen = False
        self.quantized = True
        self.exporting = False  # export_mode: the folded weights are buffers, so they become initializers
        self.exact = False  # integer_exact: the conv sums integer codes exactly (see integer_exact)

    def folded_params(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        conv, bn = self.conv, self.bn
        if bn is None:
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
            return conv.weight, bias
        if self.bn_fold and self.training and not self.bn_frozen and x is not None:
            y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = y.numel() / y.shape[1]
                bn.running_mean.mul_(1 - BN_FOLD_MOMENTUM).add_(mean.detach() * BN_FOLD_MOMENTUM)
                bn.running_var.mul_(1 - BN_FOLD_MOMENTUM).add_(var.detach() * (n / max(n - 1, 1)) * BN_FOLD_MOMENTUM)
            return fold_bn_params(conv.weight, conv.bias, bn, mean, var)
        if not self.training:  # the exact float64 fold the exporter writes
            return folded_block_params(self)
        return fold_bn_params(conv.weight, conv.bias, bn)

    def forward(self, x: Tensor) -> Tensor:
        if self.in_q.observer is not None:  # calibration: observe, compute in float
            self.in_q.observe(x)
            return ConvBlock.forward(self, x)
        if not self.quantized:
            return ConvBlock.forward(self, x)
        if self.exact:
            return self._exact_forward(x)
        x = self.in_q(x)
        w, b = (self.export_w, self.export_b) if self.exporting else self.folded_params(x)
        conv = self.conv
        return self.act(F.conv2d(x, self.w_q(w), b, conv.stride, conv.padding, conv.dilation, conv.groups))

    def _exact_forward(self, x: Tensor) -> Tensor:
        """Eval-mode forward in the arithmetic of an int8 engine: the conv sums integer codes exactly
        (float64), then one float32 rescale by s_x·s_w per output channel and the float32 bias."""
        q_in, w_q = self.in_q, self.w_q
        if self.training or not q_in.enabled or not q_in.scheme_obj.uses_ranges or not w_q.scheme_obj.uses_ranges:
            raise UsageError("integer-exact evaluation needs an eval-mode affine or pow2 model")
        s_x = q_in.scale()
        codes = q_in.codes(x, s_x)
        w, b = folded_block_params(self)
        s_w = w_q.scale(w)
        w_codes = quantize(w, s_w, w_q.qmin, w_q.qmax, w_q.rounding)
        conv = self.conv
        acc = F.conv2d(codes.double(), w_codes.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
        bound = F.conv2d(codes.double().abs(), w_codes.double().abs(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
        self.exact_bound = float(bound.max())  # every partial sum of the codes is at most this
        rescale = (s_x.float() * s_w.float().reshape(-1)).reshape(1, -1, 1, 1)
        return self.act(acc.float() * rescale + b.float().reshape(1, -1, 1, 1))


class QuantShortcut(nn.Module):
    """A darknet ``[shortcut]`` add whose two inputs are quantized (one shared scale with ``equal``)."""

    kind = "shortcut"

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.qa = ActQuantizer(spec)
        self.qb = None if spec.equal_scales else ActQuantizer(spec)
        self.quantized = True

    def extra_repr(self) -> str:
        return "shortcut, shared scale" if self.qb is None else "shortcut"

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        if self.qb is None:
            if self.qa.observe(x, other) or not self.quantized:
                return x + other
            return self.qa.apply(x) + self.qa.apply(other)
        if self.qa.observer is not None:
            self.qa.observe(x)
            self.qb.observe(other)
            return x + other
        if not self.quantized:
            return x + other
        return self.qa(x) + self.qb(other)


class QuantDarknet(Darknet):
    """A prepared Darknet: as its base, but ``[shortcut]`` layers call their :class:`QuantShortcut`."""

    quant_spec: QuantSpec

    def _shortcut(self, module: nn.Module, x: Tensor, source: Tensor) -> Tensor:
        return module(x, source) if isinstance(module, QuantShortcut) else x + source


def is_quantized(model: nn.Module) -> bool:
    return isinstance(model, QuantDarknet)


def fold_bn(model: Darknet) -> Darknet:
    """A copy of a float model with every BN folded into its conv (a conv with bias, ``bn = None``).

    The copy computes the same function in eval mode; its cfg still says ``batch_normalize=1``, so it
    is for export and inference, not for writing darknet weights or further training.
    """
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


def prepare_qat(model: Darknet, spec: QuantSpec) -> Darknet:
    """Insert fake quantization into ``model`` in place and return it (see the module docstring)."""
    if not isinstance(spec, QuantSpec):
        raise UsageError(f"prepare_qat needs a QuantSpec, got {type(spec).__name__}")
    if is_quantized(model):
        raise UsageError("the model is already prepared for quantization")
    if not isinstance(model, Darknet):
        raise UsageError(f"prepare_qat takes an edgeyolo Darknet model, got {type(model).__name__}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    edges = {0} | {y.index - 1 for y in model.cfg.yolo_layers}  # the image-input conv, the head convs
    for layer, module in zip(model.cfg.layers, list(model.module_list)):
        if isinstance(layer, ConvSpec) and isinstance(module, ConvBlock):
            role = "input" if layer.index == 0 else "act"
            own = spec.at_edges() if layer.index in edges else spec
            model.module_list[layer.index] = QuantConvBlock(module, own, role).to(device)
        elif isinstance(layer, ShortcutSpec) and spec.scheme_obj.quantize_adds:
            model.module_list[layer.index] = QuantShortcut(spec).to(device)
    model.__class__ = QuantDarknet
    model.quant_spec = spec
    model.train(model.training)
    return model


def _require(model: nn.Module) -> QuantDarknet:
    if not is_quantized(model):
        raise UsageError("the model is not prepared for quantization; call prepare_qat(model, spec) first")
    return model  # type: ignore[return-value]


def quant_layers(model: nn.Module) -> list[int]:
    """Darknet layer indices that carry quantizers (convs and residual adds)."""
    model = _require(model)
    return [i for i, m in enumerate(model.module_list) if isinstance(m, (QuantConvBlock, QuantShortcut))]


def float_layers(model: nn.Module) -> list[int]:
    model = _require(model)
    return [i for i in quant_layers(model) if not model.module_list[i].quantized]


def set_float_layers(model: nn.Module, layers: Iterable[int]) -> None:
    """Keep these layers in float (every other quantizable layer is quantized)."""
    model = _require(model)
    wanted = set(int(i) for i in layers)
    known = set(quant_layers(model))
    bad = sorted(wanted - known)
    if bad:
        raise UsageError(f"layers {bad} carry no quantizer; quantizable layers are convs and shortcuts: {sorted(known)}")
    for i in known:
        model.module_list[i].quantized = i not in wanted


@contextmanager
def only_quantized(model: nn.Module, layers: Iterable[int]) -> Iterator[None]:
    """Temporarily quantize just ``layers`` (empty: the float model); restores the flags after."""
    model = _require(model)
    before = {i: model.module_list[i].quantized for i in quant_layers(model)}
    wanted = set(layers)
    try:
        for i in before:
            model.module_list[i].quantized = i in wanted
        yield
    finally:
        for i, flag in before.items():
            model.module_list[i].quantized = flag


def act_quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    return {name: m for name, m in _require(model).named_modules() if isinstance(m, ActQuantizer)}


def freeze_ranges(model: nn.Module, frozen: bool = True) -> None:
    """Stop (or resume) QAT's EMA range updates — the reference freezes them after 10 % of the steps."""
    for q in act_quantizers(model).values():
        q.frozen = frozen


def freeze_bn(model: nn.Module, frozen: bool = True) -> None:
    """Switch BN-folded QAT from batch to running statistics — the reference does it at 90 % of the steps."""
    for m in _require(model).module_list:
        if isinstance(m, QuantConvBlock):
            m.bn_frozen = frozen


@contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Quantizers emit ONNX-exportable fake-quant ops and convs use their eagerly folded weights."""
    model = _require(model)
    quantizers = [m for m in model.modules() if isinstance(m, (ActQuantizer, WeightQuantizer))]
    blocks = [m for m in model.module_list if isinstance(m, QuantConvBlock)]
    try:
        for q in quantizers:
            q.export = True
            if isinstance(q, ActQuantizer) and q.enabled and q.scheme_obj.uses_ranges and float(q.amax) > 0:
                q._export_scale = q.scale().detach().clone()
        for b in blocks:
            w, bias = b.folded_params()
            # buffers, not constants: the exporter keeps QuantizeLinear on an initializer unfolded
            b.register_buffer("export_w", w.detach().clone(), persistent=False)
            b.register_buffer("export_b", bias.detach().clone(), persistent=False)
            b.exporting = True
        yield
    finally:
        for q in quantizers:
            q.export = False
            if isinstance(q, ActQuantizer):
                q._export_scale = None
        for b in blocks:
            b.exporting = False
            for name in ("export_w", "export_b"):
                if name in b._buffers:
                    del b._buffers[name]


@contextmanager
def integer_exact(model: nn.Module) -> Iterator[list[QuantConvBlock]]:
    """Quantized convs compute as int8 engines do (int32-exact sums of codes, then a float rescale)
    instead of summing dequantized floats, whose rounding depends on the runtime's summation order.
    Yields the blocks; each records ``exact_bound``, the largest sum of |code products| it met."""
    model = _require(model)
    blocks = [m for m in model.module_list if isinstance(m, QuantConvBlock) and m.quantized]
    try:
        for b in blocks:
            b.exact = True
        yield blocks
    finally:
        for b in blocks:
            b.exact = False


@contextmanager
def capture_codes(model: nn.Module, force: dict[str, list[Tensor]] | None = None) -> Iterator[dict[str, list[Tensor]]]:
    """Record the integer codes every activation quantizer produces, by module name, in call order.

    With ``force`` (codes by module name, in call order), each quantizer records its own codes but
    passes the forced ones on, so every layer is compared on identical inputs: float summation
    order differs between runtimes, and with non-power-of-two scales a code flipped at a rounding
    boundary otherwise cascades through every later layer.
    """
    quantizers = act_quantizers(model)
    codes: dict[str, list[Tensor]] = {name: [] for name in quantizers}
    try:
        for name, q in quantizers.items():
            q.capture = codes[name]
            q.force = list(force[name]) if force and name in force else None
        yield codes
    finally:
        for q in quantizers.values():
            q.capture = None
            q.force = None
