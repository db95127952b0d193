"""OpenCV DNN's darknet importer: an independent implementation of darknet used as an oracle.

OpenCV names blobs after darknet layer numbers, but not uniformly: a convolution ``i`` yields
``conv_i`` and ``bn_i``, while its activation is named after the *next* number (``leaky_{i+1}``).
``blob_name`` hides that so callers can ask for "the output of darknet layer i".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeyolo.model.cfg import Cfg, ConvSpec

_PREFIXES = {
    "maxpool": ("pool_",),
    "route": ("concat_", "identity_", "slice_"),
    "dropout": ("identity_",),
    "yolo": ("yolo_",),
}
_CONV_TAIL = ("bn_", "leaky_", "relu_", "mish_", "swish_", "logistic_", "sigmoid_", "tanh_")


def load_net(cfg_path: str | Path, weights_path: str | Path | None = None, threads: int = 0, winograd: bool = False) -> Any:
    """OpenCV DNN net on the CPU. Winograd 3x3 convolution is off by default: it trades accuracy for
    speed (on a random-init yolov4 at 256 px it moved OpenCV's heads up to 1.2e-4 of their maximum
    away from our model, against at most 7.8e-5 without it), which an oracle cannot afford."""
    import cv2

    if threads:
        cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path) if weights_path else None)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableWinograd(winograd)
    return net


def blob_name(cfg: Cfg, index: int, names: Sequence[str]) -> str:
    """OpenCV's name for the full output (after BN and activation) of darknet layer ``index``."""
    layer = cfg.layers[index]
    if isinstance(layer, ConvSpec):
        start = names.index(f"conv_{index}")
        name = names[start]
        for candidate in names[start + 1 :]:
            if candidate.startswith(_CONV_TAIL) and candidate.rsplit("_", 1)[1] in (str(index), str(index + 1)):
                name = candidate
            else:
                break
        return name
    prefixes = _PREFIXES.get(layer.section, (layer.section + "_",))
    for name in names:
        if name.rsplit("_", 1)[-1] == str(index) and name.startswith(prefixes):
            return name
    raise KeyError(f"OpenCV has no blob for darknet layer {index} ([{layer.section}])")


def forward_layers(net: Any, cfg: Cfg, blob: np.ndarray, layers: Sequence[int]) -> dict[int, np.ndarray]:
    names = list(net.getLayerNames())
    wanted = [blob_name(cfg, i, names) for i in layers]
    net.setInput(np.ascontiguousarray(blob, dtype=np.float32))
    outs = net.forward(wanted)
    return {i: np.asarray(o) for i, o in zip(layers, outs)}
