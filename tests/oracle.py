"""Helpers for comparing our runtimes against OpenCV DNN's darknet importer (the independent oracle)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from edgeyolo.contract import Contract
from edgeyolo.model.cfg import Cfg, ConvSpec, RouteSpec
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.init import calibration_batch, load_images, random_init, synthetic_images

TOLERANCE = 1e-4  # max|Δ| / max|ref|


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def assert_non_degenerate(ref: np.ndarray, what: str) -> None:
    """A comparison only means something on finite, varied values."""
    assert np.isfinite(ref).all(), f"{what}: non-finite values"
    assert ref.std() > 1e-3 * max(1.0, float(np.abs(ref).max())), f"{what}: nearly constant ({ref.std():.3g})"
    assert np.mean(np.abs(ref) > 1e-6) > 0.2, f"{what}: mostly zeros"


def letterboxed(photo: Path, size: int, channels: int = 3) -> np.ndarray:
    contract = Contract(size, size, channel_order="gray" if channels == 1 else "rgb")
    return contract.preprocess(cv2.imread(str(photo)))[0]


def middle_convs(cfg: Cfg, count: int = 3) -> list[int]:
    """Intermediate convs spread over the depth, skipping those consumed by a concat.

    OpenCV writes a concat's inputs straight into the concat buffer, so those blobs are not reliable.
    """
    routed = {i for layer in cfg.layers if isinstance(layer, RouteSpec) and len(layer.layers) > 1 for i in layer.layers}
    heads = {y.index - 1 for y in cfg.yolo_layers}
    convs = [layer.index for layer in cfg.layers if isinstance(layer, ConvSpec) and layer.index not in routed | heads]
    picks = [convs[round(k * (len(convs) - 1) / (count - 1))] for k in range(count)]
    return sorted(set(picks))


def calibrated_model(cfg: Cfg, size: int, seed: int, photos: list[Path]) -> Darknet:
    model = Darknet(cfg)
    contract = Contract(size, size, channel_order="gray" if cfg.net.channels == 1 else "rgb")
    images = load_images(photos[0].parent, 4) + synthetic_images(2, size, size, seed)
    random_init(model, calibration_batch(contract, images), seed=seed)
    return model.eval()


def torch_layers(model: Darknet, blob: np.ndarray, layers: list[int]) -> dict[int, np.ndarray]:
    with torch.no_grad():
        _, captured = model.run(torch.from_numpy(blob), set(layers))
    return {i: t.numpy() for i, t in captured.items()}
