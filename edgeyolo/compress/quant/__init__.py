"""Quantization of darknet models: fake-quant QAT, PTQ calibration, BN folding, pow2 / DPU arithmetic.

The placement of the quantizers (conv inputs and residual-add inputs) is described in
:mod:`edgeyolo.compress.quant.modules`; the QDQ exporter (``edgeyolo.export.qdq``) reproduces it
code for code. Schemes (:data:`SCHEMES`, :mod:`edgeyolo.compress.quant.schemes`) and calibration
methods (:data:`METHODS`, :mod:`edgeyolo.compress.quant.calib`) are registered classes.
"""
from __future__ import annotations

from edgeyolo.compress.quant.artifacts import load_quantized, save_quantized
from edgeyolo.compress.quant.calib import METHODS, CalibMethod, calibrate
from edgeyolo.compress.quant.modules import (
    QuantDarknet,
    float_layers,
    fold_bn,
    freeze_bn,
    freeze_ranges,
    is_quantized,
    prepare_qat,
    quant_layers,
    set_float_layers,
)
from edgeyolo.compress.quant.schemes import SCHEMES, QuantScheme, get_scheme, parse_scheme
from edgeyolo.compress.quant.spec import QuantSpec

__all__ = [
    "METHODS",
    "SCHEMES",
    "CalibMethod",
    "QuantDarknet",
    "QuantScheme",
    "QuantSpec",
    "calibrate",
    "float_layers",
    "fold_bn",
    "freeze_bn",
    "freeze_ranges",
    "get_scheme",
    "is_quantized",
    "load_quantized",
    "parse_scheme",
    "prepare_qat",
    "quant_layers",
    "save_quantized",
    "set_float_layers",
]
