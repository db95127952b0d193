"""Where an int8 ONNX puts its Q/DQ pairs depends on the runtime that reads it: one registered layout
per runtime, named by the target profiles (``TargetProfile.int8_layout``).

* ``tensorrt`` (:mod:`edgeyolo.export.qdq`): Q/DQ on conv inputs only, int8 symmetric, exported from a
  calibrated fake-quant model (``edgeyolo quantize``); TensorRT fuses its own way and rejects extra pairs.
* ``onnxruntime`` (:mod:`edgeyolo.export.host_int8`): every tensor of the network quantized, u8
  activations with a zero point and s8 per-channel weights, so the CPU provider runs integer kernels;
  quantized at export from the float model and calibration images.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeyolo.registry import Registry


@dataclass(frozen=True)
class Int8Layout:
    name: str
    runtime: str
    activations: str
    weights: str
    quantizes_at_export: bool  # True: float model + calibration images in; False: a quantized (fake-quant) model in
    command: str  # the CLI that writes it


INT8_LAYOUTS: Registry[Int8Layout] = Registry("int8 layout")
INT8_LAYOUTS.add("tensorrt", Int8Layout(
    "tensorrt", "TensorRT (explicit quantization)", "s8 symmetric per tensor, on conv inputs",
    "s8 symmetric per output channel", quantizes_at_export=False, command="edgeyolo quantize … && edgeyolo export qdq",
))
INT8_LAYOUTS.add("onnxruntime", Int8Layout(
    "onnxruntime", "onnxruntime CPU (QLinearConv and friends)", "u8 asymmetric per tensor, on every tensor",
    "s8 symmetric per output channel (7 bits without VNNI)", quantizes_at_export=True, command="edgeyolo export int8",
))
