"""Fake quantization: the rounding modes, the straight-through estimator, and the integer references.

Rounding is the one place where runtimes disagree, so each mode is explicit:

* ``even`` — round half to even. ONNX ``QuantizeLinear`` (and so TensorRT and onnxruntime) rounds
  this way, and so does ``torch.round``; every non-Vitis quantizer uses it so that a QDQ export
  reproduces the torch codes exactly.
* ``away`` — round half away from zero (``std_round`` in vai_q): the DPU's weights, bias and input.
* ``up`` — round half up, ``floor(x + 0.5)`` (``half_up`` in vai_q): the DPU's activations.

Quantization divides by the scale (``x / s``, as onnxruntime does) rather than multiplying by a
reciprocal: for non-power-of-two scales the two differ in the last bit and can flip a tie.
"""
from __future__ import annotations

import torch
from torch import Tensor

ROUNDINGS = ("even", "away", "up")


def round_half_even(x: Tensor) -> Tensor:
    return torch.round(x)


def round_half_away(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def round_half_up(x: Tensor) -> Tensor:
    return torch.floor(x + 0.5)


_ROUND = {"even": round_half_even, "away": round_half_away, "up": round_half_up}


def round_ste(x: Tensor, mode: str = "even") -> Tensor:
    """Rounded values forward, identity gradient backward (straight-through estimator)."""
    return x + (_ROUND[mode](x) - x).detach()


def qrange(bits: int, narrow: bool = False) -> tuple[int, int]:
    """Signed integer range: −2^(b−1)..2^(b−1)−1, or symmetric −(2^(b−1)−1).. with ``narrow``."""
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow else -qmax - 1), qmax


def quantize(x: Tensor, scale: Tensor, qmin: int, qmax: int, mode: str = "even") -> Tensor:
    """Integer codes (as float) of ``x``; ``scale`` broadcasts (per tensor or per channel)."""
    return torch.clamp(round_ste(x / scale, mode), qmin, qmax)


def fake_quant(x: Tensor, scale: Tensor, qmin: int, qmax: int, mode: str = "even") -> Tensor:
    """Quantize-dequantize with STE: gradients pass inside the range and stop where it clips."""
    return quantize(x, scale, qmin, qmax, mode) * scale


def affine_scale(amax: Tensor, bits: int) -> Tensor:
    """Symmetric scale mapping ``amax`` to the largest code (TensorRT's ``amax / 127``)."""
    return amax.clamp_min(1e-8) / (2 ** (bits - 1) - 1)


def pow2_ceil_exponent(amax: Tensor) -> Tensor:
    """``ceil(log2(amax))`` computed exactly (frexp, not a float log)."""
    mantissa, exponent = torch.frexp(amax.clamp_min(2.0**-100).float())
    return exponent - (mantissa == 0.5).to(exponent.dtype)


def pow2_scale(amax: Tensor, bits: int) -> Tensor:
    """Power-of-two scale ``2^ceil(log2 amax) / 2^(b−1)`` (the reference's FPGA quantizer): the range
    is rounded up, so at most the single top code of an exact power-of-two range clips."""
    return pow2_from_exponent(pow2_ceil_exponent(amax) - (bits - 1))


def pow2_from_exponent(exponent: Tensor) -> Tensor:
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent.to(torch.int32))


def is_pow2(scale: Tensor) -> bool:
    mantissa, _ = torch.frexp(scale.float())
    return bool((mantissa == 0.5).all())


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    """DoReFa weights: ``2·round((2^k−1)·(tanh w / (2·max|tanh w|) + ½)) / (2^k−1) − 1``.

    Multiplied back by ``max|w|``: the reference's folded variant applies the formula to BN-folded
    weights and so loses each layer's scale; restoring it keeps a folded BN meaningful.
    """
    levels = 2**bits - 1
    t = torch.tanh(w)
    t = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    return (2 * round_ste(levels * t) / levels - 1) * w.detach().abs().max()


def dorefa_act(x: Tensor, bits: int, prescale: float = 2.0**-3) -> Tensor:
    """DoReFa activations: ``round((2^k−1)·clip(x·2^−3, 0, 1)) / (2^k−1)``, scaled back by 2^3.

    Negative inputs (LeakyReLU's) clip to 0, as in the reference; the reference leaves the output
    scaled down by 8, which is fixed here.
    """
    levels = 2**bits - 1
    return round_ste(levels * torch.clamp(x * prescale, 0, 1)) / levels / prescale


# ------------------------------------------------------------------ integer references (the DPU's)


def dpu_leaky_codes(q: Tensor) -> Tensor:
    """LeakyReLU on int8 codes as the DPU computes it: ``(26·q + 128) >> 8`` for q < 0 (slope 26/256,
    result rounded half up); identical to quantizing the float ``q·s·26/256`` with round-half-up."""
    q = q.to(torch.int64)
    return torch.where(q < 0, torch.div(26 * q + 128, 256, rounding_mode="floor"), q)
