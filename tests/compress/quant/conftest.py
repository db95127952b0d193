"""Shared models and images for the quantization tests."""
from __future__ import annotations

import pytest
import torch

from edgeyolo.contract import Contract
from edgeyolo.model.cfg import parse_cfg_text
from edgeyolo.model.checkpoint import load_model
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.init import calibration_batch, random_init, synthetic_images
from tests.conftest import cfg_path

# a small residual net: conv, downsample conv, residual block (1x1, 3x3, add), route concat, head
RES_CFG = """
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=4
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[route]
layers=-1,-4

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


def synthetic_batches(count: int, size: int, seed: int, per_batch: int = 2) -> list[torch.Tensor]:
    """Image-like synthetic pictures (never the evaluation photos) as preprocessed batches."""
    contract = Contract(size, size)
    images = synthetic_images(count, size, size, seed)
    return [calibration_batch(contract, images[i : i + per_batch]) for i in range(0, count, per_batch)]


def res_model(seed: int = 0) -> Darknet:
    model = Darknet(parse_cfg_text(RES_CFG, "res.cfg"))
    random_init(model, synthetic_batches(4, 64, seed + 100, 4)[0], seed=seed)
    return model.eval()


@pytest.fixture
def res() -> Darknet:
    return res_model()


@pytest.fixture
def tiny_float(tiny_weights) -> Darknet:
    return load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
